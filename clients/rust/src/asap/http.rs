//! ASAP over HTTP: one JSON-RPC request per `POST /asap`, on a pooled `reqwest::Client`.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::Value;

use super::rpc_error;
use crate::{Error, Token};

/// The header that names the HTTP wire versions the client speaks.
const VERSION_HEADER: &str = "ASAP-Version";

/// The HTTP transport: where to post, with which token and versions.
#[derive(Debug)]
pub(crate) struct HttpConn {
    client: reqwest::Client,
    url: Url,
    token: Token,
    versions: String,
    timeout: Duration,
}

impl HttpConn {
    pub(crate) fn new(
        url: Url,
        token: Token,
        versions: String,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<HttpConn, Error> {
        // One client for the connection's lifetime: it keeps a pool of connections per
        // host, so consecutive requests reuse one.
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| Error::Transport(chain(&e)))?;
        Ok(HttpConn {
            client,
            url,
            token,
            versions,
            timeout,
        })
    }

    /// Posts one JSON-RPC `body`: the `result` of its answer, `None` for `204 No Content`
    /// (a notification), [`Error::Asap`] for a JSON-RPC error, [`Error::AsapRefused`] for a
    /// refusal by status.
    pub(crate) async fn post(&self, body: String) -> Result<Option<Value>, Error> {
        let token = self.token.get().await.map_err(Error::Token)?;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .header(VERSION_HEADER, self.versions.as_str())
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.failed(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.failed(&e))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(Error::AsapRefused {
                status: status.as_u16(),
                message: describe_body(&bytes).unwrap_or_else(|| {
                    status
                        .canonical_reason()
                        .unwrap_or("request refused")
                        .to_owned()
                }),
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let mut answer = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(answer)) => answer,
            Ok(_) => {
                return Err(Error::InvalidAnswer(
                    "the answer is not a JSON-RPC response object".into(),
                ))
            }
            Err(e) => return Err(Error::InvalidAnswer(format!("the answer is not JSON: {e}"))),
        };
        match answer.remove("error") {
            None | Some(Value::Null) => Ok(Some(answer.remove("result").unwrap_or(Value::Null))),
            Some(error) => Err(rpc_error(error)),
        }
    }

    fn failed(&self, e: &reqwest::Error) -> Error {
        if e.is_timeout() {
            return Error::Timeout(format!(
                "no answer from {} within {:?}",
                self.url, self.timeout
            ));
        }
        Error::Transport(chain(e))
    }
}

/// An error and its sources, `a: b: c` (reqwest's own message names only the first).
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// What a refusal's body says: a JSON `detail`, a JSON-RPC error's specific text or
/// message, or the text itself (shortened).
pub(crate) fn describe_body(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let said = [
            value.get("detail"),
            value.pointer("/error/data/error"),
            value.pointer("/error/message"),
        ]
        .into_iter()
        .flatten()
        .find_map(Value::as_str);
        if let Some(said) = said {
            return Some(said.to_owned());
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(text.chars().take(200).collect())
}
