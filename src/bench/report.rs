//! What `bora bench` prints: a table for people, then one JSON line for
//! scripts (always the last line of stdout).

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::BenchArgs;
use super::scenarios::{Dag, Fanout, Throughput};

pub struct Report {
    tasks: usize,
    servers: usize,
    chain_len: usize,
    workers: &'static str,
    /// `sqlite` or `postgres`.
    store: String,
    /// The bench's own PostgreSQL database: its name, and where it is.
    pub store_database: Option<(String, String)>,
    /// The warm-up: every server's queues declared and first task run.
    pub declare: Option<Duration>,
    pub throughput: Option<Throughput>,
    /// Chain link latencies (µs).
    pub chain: Vec<i64>,
    /// Link latencies (µs) of the chain whose tasks pass a value on
    /// through input references.
    pub chain_refs: Vec<i64>,
    pub dag: Option<Dag>,
    /// The `--fanout` run.
    pub fanout: Option<Fanout>,
    /// `--print-bytes`: what each throughput task printed.
    pub print_bytes: Option<usize>,
    /// Raw pipelined run: microseconds for `tasks` messages.
    pub raw_throughput: Option<i64>,
    /// Raw round trips (µs).
    pub raw_rtt: Vec<i64>,
    /// The dispatcher process's RSS and peak RSS after the throughput run.
    pub dispatcher_rss: Option<(u64, u64)>,
    /// CPU time per task of the throughput run (µs), per process kind.
    pub cpu_per_task: super::env::Cpu,
    /// The broker's CPU time per message of the raw throughput run (µs).
    pub raw_broker_cpu_per_task: Option<u64>,
    /// The broker's `mem_used` after the throughput run.
    pub broker_mem: Option<u64>,
}

/// The `p`th percentile (nearest rank) of `values`, or 0 when empty.
pub fn percentile(values: &[i64], p: f64) -> i64 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn mb(bytes: u64) -> f64 {
    round(bytes as f64 / (1024.0 * 1024.0), 1)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Report {
    pub fn new(args: &BenchArgs, workers: &'static str, store: String) -> Self {
        Self {
            tasks: args.tasks,
            servers: args.servers,
            chain_len: args.chain,
            workers,
            store,
            store_database: None,
            declare: None,
            throughput: None,
            chain: Vec::new(),
            chain_refs: Vec::new(),
            dag: None,
            fanout: None,
            print_bytes: args.print_bytes,
            raw_throughput: None,
            raw_rtt: Vec::new(),
            dispatcher_rss: None,
            cpu_per_task: super::env::Cpu::default(),
            raw_broker_cpu_per_task: None,
            broker_mem: None,
        }
    }

    fn raw_tps(&self) -> Option<f64> {
        self.raw_throughput
            .map(|us| self.tasks as f64 / (us.max(1) as f64 / 1e6))
    }

    /// The JSON line's object.
    pub fn json(&self) -> Value {
        let tps = self.throughput.as_ref().map(Throughput::tps);
        let raw_tps = self.raw_tps();
        let link_p50 = percentile(&self.chain, 50.0);
        let rtt_p50 = percentile(&self.raw_rtt, 50.0);
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        put("tasks", json!(self.tasks));
        if let Some(b) = self.print_bytes {
            // The throughput tasks were scripts printing this much each.
            put("print_bytes", json!(b));
        }
        put("servers", json!(self.servers));
        put("chain", json!(self.chain_len));
        put("workers", json!(self.workers));
        put("store", json!(self.store));
        if let Some((name, _)) = &self.store_database {
            put("store_database", json!(name));
        }
        put("throughput_tps", json!(tps.map(|t| round(t, 1))));
        put("raw_throughput_tps", json!(raw_tps.map(|t| round(t, 1))));
        put(
            "throughput_ratio",
            json!(tps.zip(raw_tps).map(|(b, r)| round(b / r, 3))),
        );
        put(
            "submit_s",
            json!(
                self.throughput
                    .as_ref()
                    .map(|t| round(t.submit_us as f64 / 1e6, 3))
            ),
        );
        put("chain_link_p50_us", json!(link_p50));
        put("chain_link_p99_us", json!(percentile(&self.chain, 99.0)));
        let refs_p50 = percentile(&self.chain_refs, 50.0);
        put("chain_refs_link_p50_us", json!(refs_p50));
        put(
            "chain_refs_link_p99_us",
            json!(percentile(&self.chain_refs, 99.0)),
        );
        put(
            "chain_refs_ratio",
            json!((rtt_p50 > 0).then(|| round(refs_p50 as f64 / rtt_p50 as f64, 3))),
        );
        put("raw_rtt_p50_us", json!(rtt_p50));
        put("raw_rtt_p99_us", json!(percentile(&self.raw_rtt, 99.0)));
        put(
            "chain_ratio",
            json!((rtt_p50 > 0).then(|| round(link_p50 as f64 / rtt_p50 as f64, 3))),
        );
        put(
            "declare_s",
            json!(self.declare.map(|d| round(d.as_secs_f64(), 3))),
        );
        put(
            "dispatcher_rss_mb",
            json!(self.dispatcher_rss.map(|(r, _)| mb(r))),
        );
        put(
            "dispatcher_peak_rss_mb",
            json!(self.dispatcher_rss.map(|(_, p)| mb(p))),
        );
        put(
            "dispatcher_cpu_us_per_task",
            json!(self.cpu_per_task.dispatcher),
        );
        put("workers_cpu_us_per_task", json!(self.cpu_per_task.workers));
        put("broker_cpu_us_per_task", json!(self.cpu_per_task.broker));
        put(
            "raw_broker_cpu_us_per_task",
            json!(self.raw_broker_cpu_per_task),
        );
        put(
            "database_cpu_us_per_task",
            json!(self.cpu_per_task.database),
        );
        put("broker_mem_mb", json!(self.broker_mem.map(mb)));
        if let Some(f) = &self.fanout {
            put("fanout_servers", json!(f.servers));
            put(
                "fanout_register_s",
                json!(round(f.register_us as f64 / 1e6, 3)),
            );
            put(
                "fanout_release_to_end_ms",
                json!(round(f.release_to_end_us as f64 / 1e3, 1)),
            );
        }
        if let Some(d) = &self.dag {
            put("dag_tasks", json!(d.tasks));
            put("dag_create_s", json!(round(d.create_us as f64 / 1e6, 3)));
            put("dag_drain_s", json!(round(d.drain_us as f64 / 1e6, 3)));
            put(
                "dag_tps",
                json!(round(d.tasks as f64 / (d.total_us.max(1) as f64 / 1e6), 1)),
            );
            put(
                "dag_drain_tps",
                json!(round(d.tasks as f64 / (d.drain_us.max(1) as f64 / 1e6), 1)),
            );
            put("dag_rss_mb", json!(d.rss_after_create.map(mb)));
            put("dag_peak_rss_mb", json!(d.peak_rss.map(mb)));
            put(
                "dag_broker_mem_mb",
                json!(d.broker_mem_after_create.map(mb)),
            );
        }
        Value::Object(m)
    }

    /// Prints the table (unless `json_only`) and the JSON line.
    pub fn print(&self, json_only: bool) {
        let j = self.json();
        if !json_only {
            let f = |k: &str| match &j[k] {
                Value::Null => "-".to_owned(),
                v => v.to_string(),
            };
            let store = match &self.store_database {
                Some((_, label)) => format!("{label} (made for this run, dropped after)"),
                None => self.store.clone(),
            };
            println!(
                "bora bench: {} tasks over {} servers, chain of {}; workers: {}; store: {store}",
                self.tasks, self.servers, self.chain_len, self.workers
            );
            println!(
                "{:<34} {:>14} {:>14} {:>8}",
                "", "bora", "raw lapin", "ratio"
            );
            println!(
                "{:<34} {:>14} {:>14} {:>8}",
                "throughput (tasks/s)",
                f("throughput_tps"),
                f("raw_throughput_tps"),
                f("throughput_ratio")
            );
            println!(
                "{:<34} {:>14} {:>14} {:>8}",
                "chain link / round trip p50 (µs)",
                f("chain_link_p50_us"),
                f("raw_rtt_p50_us"),
                f("chain_ratio")
            );
            println!(
                "{:<34} {:>14} {:>14}",
                "chain link / round trip p99 (µs)",
                f("chain_link_p99_us"),
                f("raw_rtt_p99_us")
            );
            println!(
                "{:<34} {:>14} {:>14} {:>8}",
                "chain with references p50 (µs)",
                f("chain_refs_link_p50_us"),
                f("raw_rtt_p50_us"),
                f("chain_refs_ratio")
            );
            println!(
                "{:<34} {:>14}",
                "submission of all tasks (s)",
                f("submit_s")
            );
            println!(
                "{:<34} {:>14}",
                "warm-up incl. declares (s)",
                f("declare_s")
            );
            println!(
                "{:<34} {:>14}",
                "dispatcher RSS / peak (MB)",
                format!(
                    "{} / {}",
                    f("dispatcher_rss_mb"),
                    f("dispatcher_peak_rss_mb")
                )
            );
            println!(
                "{:<34} {:>14}",
                "CPU per task (µs): dispatcher",
                f("dispatcher_cpu_us_per_task")
            );
            println!(
                "{:<34} {:>14}",
                "CPU per task (µs): workers",
                f("workers_cpu_us_per_task")
            );
            println!(
                "{:<34} {:>14} {:>14}",
                "CPU per task (µs): broker",
                f("broker_cpu_us_per_task"),
                f("raw_broker_cpu_us_per_task")
            );
            println!(
                "{:<34} {:>14}",
                "CPU per task (µs): PostgreSQL",
                f("database_cpu_us_per_task")
            );
            println!("{:<34} {:>14}", "broker mem_used (MB)", f("broker_mem_mb"));
            if self.fanout.is_some() {
                println!("{:<34} {:>14}", "fan-out: servers", f("fanout_servers"));
                println!(
                    "{:<34} {:>14}",
                    "fan-out: registration (s)",
                    f("fanout_register_s")
                );
                println!(
                    "{:<34} {:>14}",
                    "fan-out: release to end (ms)",
                    f("fanout_release_to_end_ms")
                );
            }
            if self.dag.is_some() {
                println!("{:<34} {:>14}", "dag: tasks", f("dag_tasks"));
                println!(
                    "{:<34} {:>14}",
                    "dag: create request (s)",
                    f("dag_create_s")
                );
                println!(
                    "{:<34} {:>14}",
                    "dag: drain after create (s)",
                    f("dag_drain_s")
                );
                println!("{:<34} {:>14}", "dag: tasks/s overall", f("dag_tps"));
                println!("{:<34} {:>14}", "dag: drained tasks/s", f("dag_drain_tps"));
                println!(
                    "{:<34} {:>14}",
                    "dag: dispatcher RSS after create (MB)",
                    f("dag_rss_mb")
                );
                println!(
                    "{:<34} {:>14}",
                    "dag: dispatcher peak RSS (MB)",
                    f("dag_peak_rss_mb")
                );
                println!(
                    "{:<34} {:>14}",
                    "dag: broker mem_used (MB)",
                    f("dag_broker_mem_mb")
                );
            }
        }
        println!("{j}");
    }
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
