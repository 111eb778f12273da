//! A scenario's results: one JSON line (keys in insertion order) and a human summary.

use serde_json::Value;

/// Results as ordered key/value pairs.
#[derive(Default)]
pub struct Report {
    fields: Vec<(&'static str, Value)>,
}

impl Report {
    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        let value = value.into();
        let value = match value {
            Value::Number(n) if n.is_f64() => {
                // Keep the line short: 4 significant decimals are plenty.
                let x = n.as_f64().unwrap_or(0.0);
                serde_json::json!((x * 10_000.0).round() / 10_000.0)
            }
            v => v,
        };
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    /// One line of JSON.
    pub fn json_line(&self) -> String {
        let mut out = String::from("{");
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(&serde_json::to_string(v).unwrap_or_default());
        }
        out.push('}');
        out
    }

    fn fmt(&self, key: &str, decimals: usize) -> String {
        match self.num(key) {
            Some(x) => format!("{x:.decimals$}"),
            None => "-".into(),
        }
    }

    /// A few readable lines.
    pub fn human(&self) -> String {
        let mut out = Vec::new();
        let s = |k: &str| {
            self.get(k)
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| "-".into())
        };
        out.push(format!(
            "== {} ({}) against {} at {}",
            s("label"),
            s("scenario"),
            s("target"),
            s("url")
        ));
        if let Some(Value::Array(urls)) = self.get("sub_urls") {
            let urls: Vec<&str> = urls.iter().filter_map(Value::as_str).collect();
            out.push(format!(
                "nodes      {} (subscribers round-robin over {}; publisher on the first)",
                urls.len(),
                urls.join(", ")
            ));
        }
        if self.get("connected").is_some() {
            out.push(format!(
                "connect    {} of {} in {} s ({} /s), p50 {} ms, p99 {} ms, max {} ms, errors {}",
                s("connected"),
                s("conns"),
                self.fmt("connect_total_s", 2),
                self.fmt("connect_per_s", 0),
                self.fmt("connect_p50_ms", 2),
                self.fmt("connect_p99_ms", 2),
                self.fmt("connect_max_ms", 2),
                s("connect_errors"),
            ));
        }
        if self.get("expected").is_some() {
            out.push(format!(
                "delivered  {} of {} (lost {}, {} %), out of order {}, dropped connections {}",
                s("delivered"),
                s("expected"),
                s("lost"),
                self.fmt("loss_pct", 3),
                s("out_of_order"),
                s("dropped"),
            ));
            out.push(format!(
                "throughput {} deliveries/s over {} s; published {} msg/s",
                self.fmt("deliveries_per_s", 0),
                self.fmt("duration_s", 2),
                self.fmt("publish_per_s", 0),
            ));
            out.push(format!(
                "latency    p50 {} ms, p90 {} ms, p99 {} ms, p99.9 {} ms, max {} ms ({} over 10 ms)",
                self.fmt("lat_p50_ms", 3),
                self.fmt("lat_p90_ms", 3),
                self.fmt("lat_p99_ms", 3),
                self.fmt("lat_p999_ms", 3),
                self.fmt("lat_max_ms", 3),
                s("lat_over_10ms"),
            ));
        }
        if self.get("cycles").is_some() {
            out.push(format!(
                "churn      {} cycles in {} s ({} /s), cycle p50 {} ms, p99 {} ms, errors {}",
                s("cycles"),
                self.fmt("duration_s", 2),
                self.fmt("cycles_per_s", 0),
                self.fmt("cycle_p50_ms", 2),
                self.fmt("cycle_p99_ms", 2),
                s("cycle_errors"),
            ));
        }
        if self.get("alive").is_some() {
            out.push(format!(
                "idle       {} alive after {} s, {} heartbeats answered, {} KiB/conn",
                s("alive"),
                self.fmt("hold_s", 0),
                s("pings"),
                self.fmt("kib_per_conn", 2),
            ));
        }
        if self.get("broker_rss_base_kib").is_some() || self.get("broker_cpu_s").is_some() {
            out.push(format!(
                "broker     cpu {} s ({} % of a core), {} µs/delivery; rss {} KiB -> peak {} KiB, end {} KiB",
                self.fmt("broker_cpu_s", 2),
                self.fmt("broker_cpu_pct", 0),
                self.fmt("us_per_delivery", 2),
                s("broker_rss_base_kib"),
                s("broker_rss_peak_kib"),
                s("broker_rss_end_kib"),
            ));
        }
        if self.get("redis_cpu_s").is_some() {
            out.push(format!(
                "redis      cpu {} s ({} % of a core), {} µs/delivery",
                self.fmt("redis_cpu_s", 2),
                self.fmt("redis_cpu_pct", 0),
                self.fmt("redis_us_per_delivery", 2),
            ));
        }
        if self.get("loadgen_cpu_s").is_some() {
            out.push(format!(
                "loadgen    cpu {} s ({} % of a core)",
                self.fmt("loadgen_cpu_s", 2),
                self.fmt("loadgen_cpu_pct", 0),
            ));
        }
        if let Some(Value::Array(errs)) = self.get("first_errors") {
            for e in errs {
                out.push(format!(
                    "error      {}",
                    e.as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect::<String>()
                ));
            }
        }
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::Report;

    #[test]
    fn ordered_json_and_rounding() {
        let mut r = Report::default();
        r.set("b", 1);
        r.set("a", 0.123456789);
        r.set("b", 2);
        assert_eq!(r.json_line(), "{\"b\":2,\"a\":0.1235}");
        assert!(r.human().contains("=="));
    }
}
