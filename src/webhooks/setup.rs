//! The outbox at start: open it (checking the file, applying `webhooks.on_corrupt_outbox`),
//! reconcile the endpoints the config file defines with those stored, and publish their
//! filters; and the same checks, without changing anything, for `switchboard check-config`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::filter::{EndpointFilter, Filters};
use super::outbox::{NewEndpoint, Outbox, OutboxError};
use super::signing::WebhookSecret;
use super::{normalize_secrets, now_ms};
use crate::config::{Config, ConfigError, OnCorruptOutbox};

/// Opens the outbox `[webhooks] outbox_path` names, creates or updates the endpoints the
/// file defines, and publishes their filters (before any room can raise an event). Errors
/// name the config key, or the file and how to recover it.
pub fn open_outbox(config: &Config, filters: &Filters) -> Result<Outbox, ConfigError> {
    let w = &config.webhooks;
    let invalid = |key: String, message: String| ConfigError::Invalid { key, message };
    let mut outbox = if w.outbox_path.is_empty() {
        Outbox::in_memory().map_err(|e| invalid("webhooks.outbox_path".into(), e.to_string()))?
    } else {
        open_file_outbox(config)?
    };
    for (id, endpoint) in &w.endpoints {
        let key = format!("webhooks.endpoints.{id}");
        let keep_secret = endpoint.secret.is_none();
        let secret = match &endpoint.secret {
            Some(secret) => {
                normalize_secrets(secret).map_err(|e| invalid(key.clone(), e.to_string()))?
            }
            None => WebhookSecret::generate().expose_secret().to_owned(),
        };
        let new = NewEndpoint {
            url: endpoint.url.clone(),
            secret,
            events: endpoint.events.clone(),
            rooms: endpoint.rooms.clone(),
            rate_limit_per_s: endpoint.rate_limit_per_s.unwrap_or(w.rate_limit_per_s),
        };
        outbox
            .upsert_endpoint(id, new, keep_secret, now_ms())
            .map_err(|e| invalid(key, e.to_string()))?;
    }
    let keep: Vec<&str> = w.endpoints.keys().map(String::as_str).collect();
    let removed = outbox
        .disable_removed_config_endpoints(&keep)
        .map_err(|e| invalid("webhooks.outbox_path".into(), e.to_string()))?;
    for id in removed {
        let pending = outbox.pending_count_for(&id).unwrap_or(0);
        log::warn!("webhooks: endpoint {id} was removed from the config file: disabled, {pending} pending deliveries kept (DELETE /api/webhooks/{id} drops them)");
    }
    let endpoints = outbox
        .list_endpoints()
        .map_err(|e| invalid("webhooks.outbox_path".into(), e.to_string()))?;
    if w.outbox_path.is_empty() {
        log::warn!("webhooks: the outbox is in memory (webhooks.outbox_path = \"\"): pending deliveries do not survive a restart");
    } else {
        log::info!(
            "webhooks: outbox {} ({} endpoints)",
            w.outbox_path,
            endpoints.len()
        );
    }
    filters.publish(endpoints.iter().map(EndpointFilter::of).collect());
    Ok(outbox)
}

/// Opens the file outbox, applying `webhooks.on_corrupt_outbox` to a damaged one.
fn open_file_outbox(config: &Config) -> Result<Outbox, ConfigError> {
    let w = &config.webhooks;
    let path = Path::new(&w.outbox_path);
    let failed = |message: String| ConfigError::Outbox {
        path: path.to_owned(),
        message,
    };
    let detail = match Outbox::open_with(path, w.synchronous) {
        Ok(outbox) => return Ok(outbox),
        Err(OutboxError::Corrupt(detail)) => detail,
        Err(err) => return Err(failed(format!("cannot be opened: {err}"))),
    };
    if w.on_corrupt_outbox == OnCorruptOutbox::Refuse {
        return Err(failed(format!(
            "is damaged ({detail}). Not starting: the pending deliveries it holds would be \
             lost. Recover what is readable with `sqlite3 {file} .recover | sqlite3 \
             {file}.recovered` and point webhooks.outbox_path at the recovered file, or set \
             webhooks.on_corrupt_outbox = \"move_aside\" to keep the damaged file aside \
             and start with an empty outbox.",
            file = path.display()
        )));
    }
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    // SQLite's companions move with it, so the fresh outbox does not pick up the old log.
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to).map_err(|e| {
                failed(format!(
                    "is damaged ({detail}) and could not be moved to {}: {e}",
                    to.display()
                ))
            })?;
        }
    }
    log::error!(
        "webhooks: the outbox {} was damaged ({detail}); moved it to {} and started with an \
         EMPTY outbox: the deliveries that were pending in it will not be sent (recover them \
         from the moved file), and endpoints made through the API must be registered again",
        path.display(),
        aside.display()
    );
    Outbox::open_with(path, w.synchronous)
        .map_err(|e| failed(format!("a fresh outbox cannot be created: {e}")))
}

/// Checks, without changing anything, that `serve` will be able to open the outbox that
/// `webhooks.outbox_path` names: an undamaged file it can write, or a directory in which
/// it can create one. For `switchboard check-config`.
pub fn check_outbox(config: &Config) -> Result<(), ConfigError> {
    let w = &config.webhooks;
    if w.outbox_path.is_empty() {
        return Ok(());
    }
    let path = Path::new(&w.outbox_path);
    let failed = |message: String| ConfigError::Outbox {
        path: path.to_owned(),
        message,
    };
    if path.is_dir() {
        return Err(failed("is a directory, not a file".into()));
    }
    if path.exists() {
        Outbox::check_file(path).map_err(|e| failed(e.to_string()))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| failed(format!("cannot be opened for writing: {e}")))?;
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(failed(format!(
            "cannot be created: the directory {} does not exist",
            dir.display()
        )));
    }
    // The only way to know a file can be created there is to create one.
    let probe = dir.join(format!(".switchboard-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| failed(format!("cannot be created in {}: {e}", dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
