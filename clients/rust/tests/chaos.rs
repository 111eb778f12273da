//! 10,000 messages through the chaos proxy with 100 random cuts: the subscriber gets each
//! exactly once, in order, and the publisher's retries are not delivered twice.

use crate::support;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde_json::json;
use support::chaos::ChaosProxy;
use support::{options, token, TestBroker};
use switchboard_client::{Client, SubscriptionEvent};

const ROOM: &str = "chaos:stream";
const MESSAGES: u64 = 10_000;
const CUTS: u64 = 100;
const WINDOW: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_survive_a_hundred_cuts() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("chaos seed {seed} (CHAOS_SEED={seed} to replay)");
    let broker = TestBroker::start(support::test_config());
    let proxy = Arc::new(ChaosProxy::start(broker.addr, seed, true).await);
    let started = Instant::now();

    let subscriber = Client::connect(&proxy.ws_url(), options(token("reader", &["chaos:*"])))
        .await
        .expect("subscriber connects");
    // From 0: whatever is published before the join is replayed, so nothing is missed.
    let mut stream = subscriber.subscribe_from(ROOM, 0).expect("subscribe");
    let mut sub_states = subscriber.state_changes();
    let publisher = Client::connect(&proxy.ws_url(), options(token("writer", &["chaos:*"])))
        .await
        .expect("publisher connects");
    // The publisher must be a member; its own copies are read and thrown away.
    let mut pub_states = publisher.state_changes();
    let mut own = publisher.subscribe(ROOM).expect("publisher joins");
    let drain = tokio::spawn(async move { while own.next().await.is_some() {} });

    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let publishing = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            let mut acks = Vec::with_capacity(MESSAGES as usize);
            let mut in_flight = FuturesUnordered::new();
            let mut next = 0u64;
            while next < MESSAGES || !in_flight.is_empty() {
                while next < MESSAGES && in_flight.len() < WINDOW {
                    let publisher = publisher.clone();
                    let n = next;
                    in_flight.push(async move { publisher.publish(ROOM, json!({ "n": n })).await });
                    next += 1;
                }
                let ack = in_flight
                    .next()
                    .await
                    .expect("in flight")
                    .expect("publish acked");
                acks.push(ack);
                progress_tx.send_replace(acks.len() as u64);
            }
            acks
        }
    });

    // Cut i happens once about i% of the messages are acknowledged; a third of the cuts
    // also stall another connection for a moment.
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    for i in 1..=CUTS {
        let target = i * (MESSAGES - 200) / CUTS;
        tokio::time::timeout(
            Duration::from_secs(60),
            progress.wait_for(|acked| *acked >= target),
        )
        .await
        .unwrap_or_else(|_| panic!("no progress to {target} acks (seed {seed})"))
        .expect("publisher running");
        let fault = loop {
            // Both clients may be between connections; their reconnect is bounded by
            // the backoff, so wait for a live connection (bounded).
            if let Some(fault) = proxy.cut() {
                break fault;
            }
            tokio::time::timeout(Duration::from_secs(10), async {
                while proxy.live() == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no live connection to cut (seed {seed})"));
        };
        *faults.entry(fault.to_string()).or_default() += 1;
        if i % 3 == 0 {
            if let Some(stall) = proxy.stall() {
                *faults.entry("stall".into()).or_default() += 1;
                let _ = stall;
            }
        }
    }

    let acks = tokio::time::timeout(Duration::from_secs(60), publishing)
        .await
        .unwrap_or_else(|_| panic!("publisher did not finish (seed {seed})"))
        .expect("publisher task");
    let ack_seqs: HashSet<u64> = acks.iter().map(|a| a.seq).collect();
    let duplicate_acks = acks.iter().filter(|a| a.duplicate).count();

    // The subscriber: every seq once, in order, and every n once.
    let mut seen_n = HashSet::new();
    let (mut last_seq, mut delivered, mut duplicates, mut gaps, mut out_of_order_n) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut last_n: Option<u64> = None;
    let receive = async {
        while delivered < MESSAGES {
            match stream.next().await.expect("subscription open") {
                SubscriptionEvent::Message(m) => {
                    assert_eq!(m.seq, last_seq + 1, "seq out of order (seed {seed})");
                    last_seq = m.seq;
                    let n = m.payload["n"].as_u64().expect("n");
                    if !seen_n.insert(n) {
                        duplicates += 1;
                    }
                    if last_n.is_some_and(|l| n < l) {
                        out_of_order_n += 1;
                    }
                    last_n = Some(n);
                    delivered += 1;
                }
                SubscriptionEvent::Gap(gap) => {
                    gaps += 1;
                    panic!("unexpected gap {gap:?} (seed {seed})");
                }
                SubscriptionEvent::Refused(e) => panic!("refused: {e}"),
                other => panic!("unexpected {other:?} (seed {seed})"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), receive)
        .await
        .unwrap_or_else(|_| panic!("subscriber stuck at seq {last_seq} (seed {seed})"));
    let losses = MESSAGES - seen_n.len() as u64;
    let elapsed = started.elapsed();
    let (sub_stats, pub_stats) = (subscriber.stats(), publisher.stats());
    let cuts: u64 = faults
        .iter()
        .filter(|(k, _)| *k != "stall")
        .map(|(_, v)| v)
        .sum();
    println!(
        "chaos: seed {seed}, {MESSAGES} messages, {cuts} cuts {faults:?}, duplicates delivered {duplicates}, \
         losses {losses}, gaps {gaps}, publish order inversions {out_of_order_n}, time {elapsed:.2?}"
    );
    println!(
        "chaos: subscriber reconnects {}, replayed duplicates dropped by the client {}; publisher reconnects {}, \
         publishes resent {}, acks marked duplicate {duplicate_acks}, distinct ack seqs {}",
        sub_stats.reconnects,
        sub_stats.duplicates_dropped,
        pub_stats.reconnects,
        pub_stats.publishes_resent,
        ack_seqs.len(),
    );
    assert_eq!(cuts, CUTS);
    assert_eq!(duplicates, 0);
    assert_eq!(losses, 0);
    assert_eq!(last_seq, MESSAGES, "every publish made exactly one message");
    assert_eq!(
        ack_seqs.len() as u64,
        MESSAGES,
        "every publish got its own seq"
    );
    // A cut can land on a connection still in its handshake (a failed attempt, not a
    // reconnect), so reconnects need not reach CUTS.
    assert!(sub_stats.reconnects > 0 && pub_stats.reconnects > 0);

    subscriber.close().await;
    publisher.close().await;
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for states in [&mut sub_states, &mut pub_states] {
        while let Some(state) = states.next().await {
            if let switchboard_client::State::Reconnecting { code, reason, .. } = state {
                let reason: String = reason.chars().take(40).collect();
                *reasons.entry(format!("{code:?} {reason}")).or_default() += 1;
            }
        }
    }
    println!("chaos: why connections ended or attempts failed: {reasons:?}");
    drain.await.expect("drain ends with the client");
    drop(proxy);
    broker.wait_idle().await;
}
