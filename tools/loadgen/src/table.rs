//! `loadgen table`: one Markdown table from the JSON lines of a benchmark run.

use std::path::PathBuf;

use serde_json::Value;

use crate::proto::Error;

/// Columns, in order: switchboard first, then the peers it is compared with.
const TARGETS: [(&str, &str); 4] = [
    ("switchboard", "switchboard"),
    ("nats", "NATS"),
    ("mqtt", "Mosquitto"),
    ("nodews", "Node ws"),
];

/// Rows shown for a run, by its kind.
fn metrics(run: &Value) -> &'static [(&'static str, &'static str)] {
    let scenario = run["scenario"].as_str().unwrap_or("");
    let paced = !run["rate"].is_null();
    let hold = run["hold_s"].as_f64().unwrap_or(0.0);
    match scenario {
        "fanout" | "rooms" if !paced => &[
            ("deliveries_per_s", "deliveries/s ↑"),
            ("us_per_delivery", "broker µs/delivery ↓"),
            ("broker_cpu_pct", "broker CPU %"),
            ("lost", "lost ↓"),
            ("lat_p50_ms", "latency p50 ms"),
            ("lat_p99_ms", "latency p99 ms"),
            ("loadgen_cpu_pct", "loadgen CPU %"),
            // Only runs over a Redis engine have these; a row nobody has is left out.
            ("redis_us_per_delivery", "Redis µs/delivery ↓"),
            ("redis_cpu_pct", "Redis CPU %"),
        ],
        "fanout" | "rooms" => &[
            ("deliveries_per_s", "deliveries/s"),
            ("lost", "lost ↓"),
            ("lat_p50_ms", "latency p50 ms ↓"),
            ("lat_p90_ms", "latency p90 ms ↓"),
            ("lat_p99_ms", "latency p99 ms ↓"),
            ("lat_p999_ms", "latency p99.9 ms ↓"),
            ("lat_max_ms", "latency max ms ↓"),
            ("lat_over_10ms", "deliveries over 10 ms ↓"),
            ("us_per_delivery", "broker µs/delivery ↓"),
            ("redis_us_per_delivery", "Redis µs/delivery ↓"),
            ("redis_cpu_pct", "Redis CPU %"),
        ],
        "idle" if hold > 0.0 => &[
            ("kib_per_conn", "KiB/conn above baseline ↓"),
            ("alive", "alive at the end ↑"),
            ("pings", "heartbeats answered"),
            ("broker_cpu_pct", "broker CPU % while idle ↓"),
            ("connect_total_s", "ramp s ↓"),
        ],
        "idle" => &[
            ("connect_total_s", "ramp s ↓"),
            ("connect_p50_ms", "connect+join p50 ms ↓"),
            ("connect_p99_ms", "connect+join p99 ms ↓"),
            ("connect_errors", "errors ↓"),
            ("kib_per_conn", "KiB/conn above baseline ↓"),
        ],
        "churn" => &[
            ("cycles_per_s", "cycles/s ↑"),
            ("cycle_p50_ms", "cycle p50 ms ↓"),
            ("cycle_p99_ms", "cycle p99 ms ↓"),
            ("cycle_errors", "errors ↓"),
            ("us_per_cycle", "broker µs/cycle ↓"),
        ],
        _ => &[],
    }
}

fn fmt(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1000.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Renders every run label found in `files`, in order of first appearance.
pub fn render(files: &[PathBuf]) -> Result<String, Error> {
    let mut runs: Vec<Value> = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        for line in text.lines().filter(|l| l.starts_with('{')) {
            runs.push(serde_json::from_str(line)?);
        }
    }
    let mut labels: Vec<String> = Vec::new();
    for r in &runs {
        let l = r["label"].as_str().unwrap_or("?").to_owned();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    let mut out = String::new();
    out.push_str("| run | metric |");
    for (_, name) in TARGETS {
        out.push_str(&format!(" {name} |"));
    }
    for (_, name) in &TARGETS[1..] {
        out.push_str(&format!(" sb/{name} |"));
    }
    out.push('\n');
    out.push_str(&"| --- ".repeat(2 + TARGETS.len() * 2 - 1));
    out.push_str("|\n");
    for label in &labels {
        // The last run of each target under this label wins (a rerun replaces a run).
        let by_target: Vec<Option<&Value>> = TARGETS
            .iter()
            .map(|(t, _)| {
                runs.iter()
                    .rev()
                    .find(|r| r["label"] == label.as_str() && r["target"] == *t)
            })
            .collect();
        let Some(first) = by_target.iter().flatten().next() else {
            continue;
        };
        for (key, title) in metrics(first) {
            let vals: Vec<Option<f64>> = by_target
                .iter()
                .map(|r| r.and_then(|r| r[*key].as_f64()))
                .collect();
            if vals.iter().all(Option::is_none) {
                continue;
            }
            out.push_str(&format!("| {label} | {title} |"));
            for v in &vals {
                out.push_str(&format!(" {} |", v.map_or("-".into(), fmt)));
            }
            for v in &vals[1..] {
                let ratio = match (vals[0], v) {
                    (Some(a), Some(b)) if *b != 0.0 => format!("{:.2}", a / b),
                    _ => "-".into(),
                };
                out.push_str(&format!(" {ratio} |"));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt(1_441_853.4), "1,441,853");
        assert_eq!(fmt(0.654), "0.65");
        assert_eq!(fmt(12.34), "12.3");
        assert_eq!(fmt(0.0), "0");
    }

    #[test]
    fn renders_ratios() {
        let dir = std::env::temp_dir().join(format!("loadgen-table-{}", std::process::id()));
        std::fs::write(
            &dir,
            "{\"label\":\"f\",\"scenario\":\"fanout\",\"rate\":null,\"target\":\"switchboard\",\"deliveries_per_s\":200000}\n\
             {\"label\":\"f\",\"scenario\":\"fanout\",\"rate\":null,\"target\":\"mqtt\",\"deliveries_per_s\":100000}\n",
        )
        .unwrap();
        let t = render(std::slice::from_ref(&dir)).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(
            t.contains("| f | deliveries/s ↑ | 200,000 | - | 100,000 | - | - | 2.00 | - |"),
            "{t}"
        );
        assert!(!t.contains("Redis"), "{t}");
    }

    #[test]
    fn redis_rows_only_when_measured() {
        let dir = std::env::temp_dir().join(format!("loadgen-table-r-{}", std::process::id()));
        std::fs::write(
            &dir,
            "{\"label\":\"r\",\"scenario\":\"fanout\",\"rate\":100,\"target\":\"switchboard\",\"lat_p99_ms\":1.5,\"redis_us_per_delivery\":0.25}\n\
             {\"label\":\"m\",\"scenario\":\"fanout\",\"rate\":100,\"target\":\"switchboard\",\"lat_p99_ms\":1.2}\n",
        )
        .unwrap();
        let t = render(std::slice::from_ref(&dir)).unwrap();
        let _ = std::fs::remove_file(&dir);
        assert!(t.contains("| r | Redis µs/delivery ↓ | 0.25 | - |"), "{t}");
        assert!(!t.contains("| m | Redis"), "{t}");
        assert!(t.contains("| m | latency p99 ms ↓ | 1.20 |"), "{t}");
    }
}
