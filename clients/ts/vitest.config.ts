import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration tests start broker processes; bound every wait inside the tests themselves.
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
