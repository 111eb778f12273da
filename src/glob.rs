//! Room patterns: one glob syntax for every place a pattern names rooms (the `rooms` and
//! `publish` claims of a token, the `rooms` of a webhook endpoint), so one pattern means the
//! same everywhere.
//!
//! `*` matches any run of characters (`:` included, and none at all), `?` exactly one, and
//! every other character itself: `conversation:*`, `*:eu`, `task:??`.

/// Whether `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken so far: on a mismatch,
    // let it take one more character and try again from there.
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            backtrack = Some((pi, ti));
            pi += 1;
        } else if let Some((star, matched)) = backtrack {
            pi = star + 1;
            ti = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "", true),
            ("*", "anything:at all", true),
            ("conversation:*", "conversation:1", true),
            ("conversation:*", "conversation:", true),
            ("conversation:*", "conversations:1", false),
            ("conversation:*", "lobby", false),
            ("conversation:*", "task:1", false),
            ("lobby", "lobby", true),
            ("lobby", "lobby2", false),
            ("a", "ab", false),
            ("a*", "a", true),
            ("*:eu", "orders:eu", true),
            ("*:eu", "orders:eu:x", false),
            ("*:*:x", "a:b:x", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "a-c-b", false),
            ("ab*ba", "aba", false),
            ("**", "x", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("task:??", "task:42", true),
            ("task:??", "task:421", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(matches(pattern, text), expected, "{pattern} vs {text}");
        }
    }
}
