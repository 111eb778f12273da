//! `system.connection.resume`: rejoins the rooms of a dropped connection (and those the
//! client lists), replaying each gap after the client's last seq, then reports per room.

use std::collections::BTreeMap;

use actix::prelude::*;
use serde::Deserialize;
use serde_json::json;

use super::{parse_payload, Session};
use crate::actors::registry::TakeResume;
use crate::actors::room::JoinFrom;
use crate::protocol::frame::{self, Inbound, ReplyTo};
use crate::protocol::{types, ErrorCode};

impl Session {
    /// `system.connection.resume`: rejoins the rooms of a dropped connection (and those the
    /// client lists), replaying each gap after the client's last seq, then reports per room.
    pub(super) fn resume(&mut self, inbound: Inbound, ctx: &mut Context<Self>) {
        #[derive(Deserialize)]
        struct ResumePayload {
            connection_id: String,
            #[serde(default)]
            rooms: BTreeMap<String, u64>,
        }
        let payload = match inbound
            .payload
            .as_deref()
            .map(parse_payload::<ResumePayload>)
        {
            Some(Ok(p)) => p,
            Some(Err(msg)) => {
                let msg = format!("invalid system.connection.resume payload: {msg}");
                return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, &msg);
            }
            None => {
                let msg = "system.connection.resume needs payload.connection_id";
                return self.send_error(&inbound.reply_to, ErrorCode::BadRequest, msg);
            }
        };
        let reply_to = inbound.reply_to;
        let previous = payload.connection_id.clone();
        self.state
            .registry
            .send(TakeResume {
                connection_id: payload.connection_id,
                user: self.identity.user.clone(),
            })
            .into_actor(self)
            .then(move |found, act, _| {
                let found = found.ok().flatten();
                let session_found = found.is_some();
                // The client's last seqs, plus rooms the old connection was in that the
                // client did not list (joined without replay: their gap is unknown).
                let mut wanted: BTreeMap<String, Option<u64>> = payload
                    .rooms
                    .into_iter()
                    .map(|(room, seq)| (room, Some(seq)))
                    .collect();
                for room in found.unwrap_or_default() {
                    wanted.entry(room).or_insert(None);
                }
                let mut report = serde_json::Map::new();
                let mut joins = Vec::new();
                for (room, since_seq) in wanted {
                    if let Err((code, message)) = act.check_join(&room, joins.len()) {
                        report.insert(
                            room,
                            json!({ "error": { "code": code, "message": message } }),
                        );
                        continue;
                    }
                    // Each room answers with a native room.joined and its replay, in order.
                    let reply = ReplyTo::Native {
                        correlation_id: None,
                    };
                    // A room the client did not list has an unknown position.
                    let from = since_seq.map_or(JoinFrom::Unknown, JoinFrom::After);
                    let joining = act.join_room(room.clone(), Some(reply), from);
                    joins.push(async move { (room, joining.await) });
                }
                futures_util::future::join_all(joins)
                    .into_actor(act)
                    .map(move |results, act, _| {
                        for (room, result) in results {
                            match result {
                                Ok((addr, outcome)) => {
                                    act.rooms.insert(room.clone(), addr);
                                    report.insert(
                                        room,
                                        json!({
                                            "seq": outcome.seq,
                                            "recovered": outcome.recovered,
                                        }),
                                    );
                                }
                                Err(e) => {
                                    log::warn!("conn={} resume {room}: {e}", act.id);
                                    report.insert(
                                        room,
                                        json!({ "error": { "code": e.code(), "message": e.to_string() } }),
                                    );
                                }
                            }
                        }
                        let payload = json!({
                            "previous_connection_id": previous,
                            "session_found": session_found,
                            "rooms": report,
                        });
                        if let Some(frame) = frame::reply(
                            &reply_to,
                            types::SYSTEM_CONNECTION_RESUMED,
                            None,
                            None,
                            Some(payload),
                            |p| p.unwrap_or_default(),
                        ) {
                            act.send(frame);
                        }
                    })
            })
            .wait(ctx);
    }
}
