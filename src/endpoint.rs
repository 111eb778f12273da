//! WebSocket endpoints bound to a room: `[[endpoints]]` in the config file, or
//! [`crate::Broker::endpoint`] for an embedder.
//!
//! Protocol v1 on `/ws` makes a client join rooms itself. Systems already in production
//! connect differently — a browser opens `/ws?token=…&conversation_id=42` and expects to be
//! in conversation 42 at once; a dashboard opens `/ws/responses/{command_id}` and expects each
//! event of that command as a bare JSON text frame. An endpoint says how to serve such a
//! client without code: where its room's name comes from (path and query parameters filled
//! into a template), how frames look on the wire ([`Framing`]), where the token may come
//! from, how a refusal is signalled, whether the client may publish and how many past
//! messages a late joiner gets.
//!
//! The join is the same join as `room.join`: the token's room patterns and the namespace's
//! anonymous rule are checked before the upgrade, the per-session and broker-wide room
//! limits count it, and a join that fails after the upgrade is reported to the client and
//! closes the connection, so a client is never connected without its room.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::auth::TokenSource;
use crate::protocol::close;

/// How frames look on an endpoint's wire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// Protocol v1 (docs/PROTOCOL.md): envelopes with `type`, `room`, `seq`, acks, presence,
    /// heartbeats as `system.ping`.
    #[default]
    V1,
    /// Each room message's payload alone, byte for byte as it was published, as one text
    /// frame; nothing else (no acks, no presence, no greeting). Heartbeats are WebSocket
    /// pings, which browsers and client libraries answer by themselves. Client frames are
    /// `{"action":"subscribe"|"unsubscribe", <param>: …}`, or — when the endpoint allows it
    /// — a JSON payload to publish into the endpoint's room. The broker's own errors are
    /// `{"event":"error","source":"switchboard","code":…,"message":…}`.
    Raw,
    /// ASAP agents (docs/ASAP.md): JSON-RPC 2.0 `asap.send` envelopes answered by handler
    /// actors or forwarded to other agents; heartbeats are `{"type":"ping"}` frames. Joins
    /// no rooms, so the endpoint takes no room template. `/asap/ws` is such an endpoint.
    Asap,
}

/// How a connection that cannot be served is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reject {
    /// Upgrade, then close: a bad or missing token with `close_code`, a room the token may
    /// not join or a bad parameter with 1008. Browsers cannot read the status of a failed
    /// handshake, but they do get a close code and its reason.
    #[default]
    Close,
    /// Answer before the upgrade: 401 (token), 403 (room not allowed), 400 (parameter),
    /// each with the JSON error body.
    Http,
}

/// Who may join an endpoint's rooms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The token's `rooms` patterns must match the room, as for `room.join`.
    #[default]
    Claims,
    /// Any valid token may join the rooms of the endpoint's template (never a personal
    /// room, never an anonymous session): for identity providers such as Keycloak, whose
    /// tokens carry no `rooms` claim, where the room named in the URL is the permission.
    Authenticated,
}

/// One endpoint (`[[endpoints]]`).
///
/// ```
/// use switchboard::endpoint::{EndpointConfig, Framing};
/// let sovd = EndpointConfig::new("/ws/responses/{command_id}")
///     .room("response:{command_id}")
///     .framing(Framing::Raw)
///     .close_code(1008)
///     .replay(100);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// The route, with `{name}` path parameters (e.g. `/ws/responses/{command_id}`). An
    /// endpoint on `server.ws_path` takes that path over from the plain protocol v1 route.
    pub path: String,
    /// The room the client is joined to, as a template: `{name}` is a path parameter of
    /// that name, or else a query parameter (see `query`). Empty: no room (the client joins
    /// rooms itself; v1 only).
    pub room: String,
    /// The wire format.
    pub framing: Framing,
    /// The query parameter names a template parameter may come in, when not only its own
    /// name: `conversation_id = ["conversation_id", "conversationId"]`.
    pub query: BTreeMap<String, Vec<String>>,
    /// Where the token may come from, tried in this order: `header` (`Authorization:
    /// Bearer`), `query` (`?token=`), `cookie` (`auth.cookie_name`).
    pub token_from: Vec<TokenSource>,
    /// Who may join the endpoint's rooms.
    pub access: Access,
    /// How a refused connection learns why.
    pub reject: Reject,
    /// The close code for a missing or invalid token when `reject = "close"` (1008, 1011 or
    /// 3000-4999).
    pub close_code: u16,
    /// Whether the client may publish into the endpoint's room (its token must allow it
    /// too). With raw framing, a client frame that is not an action is published.
    pub publish: bool,
    /// How many of the room's latest messages a joining client gets first (0: none).
    pub replay: usize,
    /// Raw framing: whether `{"action":"subscribe", …}` may join more rooms of the same
    /// template (each checked against the token).
    pub subscribe: bool,
    /// The longest parameter value, in bytes.
    pub param_max_len: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            path: String::new(),
            room: String::new(),
            framing: Framing::V1,
            query: BTreeMap::new(),
            token_from: TokenSource::ALL.to_vec(),
            access: Access::Claims,
            reject: Reject::Close,
            close_code: close::AUTH_FAILED,
            publish: false,
            replay: 0,
            subscribe: true,
            param_max_len: 64,
        }
    }
}

impl EndpointConfig {
    /// A protocol v1 endpoint at `path` with no room of its own (what `server.ws_path` is).
    pub fn new(path: impl Into<String>) -> EndpointConfig {
        EndpointConfig {
            path: path.into(),
            ..EndpointConfig::default()
        }
    }

    /// The room template ([`EndpointConfig::room`]).
    pub fn room(mut self, template: impl Into<String>) -> Self {
        self.room = template.into();
        self
    }

    /// The wire format.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Query parameter names for template parameter `param`.
    pub fn query_aliases(mut self, param: &str, names: &[&str]) -> Self {
        self.query.insert(
            param.to_owned(),
            names.iter().map(|n| (*n).to_owned()).collect(),
        );
        self
    }

    /// Where the token may come from, in order.
    pub fn token_from(mut self, sources: &[TokenSource]) -> Self {
        self.token_from = sources.to_vec();
        self
    }

    /// Who may join the endpoint's rooms.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// How refusals are signalled.
    pub fn reject(mut self, reject: Reject) -> Self {
        self.reject = reject;
        self
    }

    /// The close code for a missing or invalid token.
    pub fn close_code(mut self, code: u16) -> Self {
        self.close_code = code;
        self
    }

    /// Whether the client may publish into its room.
    pub fn publish(mut self, allowed: bool) -> Self {
        self.publish = allowed;
        self
    }

    /// How many past messages a joining client gets.
    pub fn replay(mut self, messages: usize) -> Self {
        self.replay = messages;
        self
    }

    /// Checks the endpoint and prepares its room template; the error names the field.
    pub(crate) fn compile(&self) -> Result<Endpoint, (&'static str, String)> {
        let path_params = path_params(&self.path).map_err(|e| ("path", e))?;
        let template = if self.room.is_empty() {
            None
        } else {
            Some(Template::parse(&self.room).map_err(|e| ("room", e))?)
        };
        if self.framing == Framing::Asap && template.is_some() {
            return Err((
                "room",
                "asap framing joins no rooms: agents exchange envelopes, not room messages".into(),
            ));
        }
        if self.framing == Framing::Raw && template.is_none() {
            return Err((
                "room",
                "raw framing needs a room: a raw client has no way to join one".into(),
            ));
        }
        let template_params: Vec<&str> = template.iter().flat_map(|t| t.params()).collect();
        for param in &path_params {
            if !template_params.contains(&param.as_str()) {
                return Err((
                    "path",
                    format!("path parameter `{{{param}}}` is not used in `room`"),
                ));
            }
        }
        for (param, names) in &self.query {
            if path_params.contains(param) || !template_params.contains(&param.as_str()) {
                return Err((
                    "query",
                    format!("`{param}` is not a query parameter of `room` (not in the template, or a path parameter)"),
                ));
            }
            if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                return Err((
                    "query",
                    format!("`{param}` needs at least one non-empty query parameter name"),
                ));
            }
        }
        if self.token_from.is_empty() {
            return Err((
                "token_from",
                "needs at least one of header, query, cookie".into(),
            ));
        }
        let code = self.close_code;
        if !(code == close::POLICY || code == close::INTERNAL || (3000..=4999).contains(&code)) {
            return Err((
                "close_code",
                format!("{code} is not a close code a server may send for a refusal: use 1008, 1011 or 3000-4999"),
            ));
        }
        if !(1..=128).contains(&self.param_max_len) {
            return Err(("param_max_len", "must be between 1 and 128".into()));
        }
        if self.replay > MAX_REPLAY {
            return Err(("replay", format!("must be at most {MAX_REPLAY}")));
        }
        Ok(Endpoint {
            config: self.clone(),
            template,
            path_params,
        })
    }
}

/// The most messages an endpoint may replay to a joining client (history keeps at most its
/// size and byte budget anyway).
const MAX_REPLAY: usize = 10_000;

/// A checked endpoint, ready to serve.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub config: EndpointConfig,
    template: Option<Template>,
    path_params: Vec<String>,
}

/// Why a request's parameters make no room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ParamError(pub String);

impl Endpoint {
    /// The plain protocol v1 endpoint at `path`: no room, every token source, 4000.
    pub fn plain(path: &str) -> Endpoint {
        Endpoint {
            config: EndpointConfig::new(path),
            template: None,
            path_params: Vec::new(),
        }
    }

    /// The endpoint's room for a request: `None` when it has no room template.
    pub fn room_for(
        &self,
        path: &actix_web::dev::Path<actix_web::dev::Url>,
        query: &str,
    ) -> Result<Option<String>, ParamError> {
        let Some(template) = &self.template else {
            return Ok(None);
        };
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        template
            .fill(
                |param| {
                    if self.path_params.iter().any(|p| p == param) {
                        return match path.get(param) {
                            Some(value) => Ok(value.to_owned()),
                            None => Err(ParamError(format!("missing path parameter `{param}`"))),
                        };
                    }
                    let names = self.query_names(param);
                    let mut values = pairs
                        .iter()
                        .filter(|(k, _)| names.contains(&k.as_str()))
                        .map(|(_, v)| v);
                    match (values.next(), values.next()) {
                        (Some(value), None) => Ok(value.clone()),
                        (Some(_), Some(_)) => Err(ParamError(format!(
                            "query parameter `{}` is given more than once",
                            names.join("`/`")
                        ))),
                        (None, _) => Err(ParamError(format!(
                            "missing query parameter `{}`",
                            names.join("` or `")
                        ))),
                    }
                },
                self.config.param_max_len,
            )
            .map(Some)
    }

    /// The room a raw client's `{"action":"subscribe", …}` asks for: each template
    /// parameter from the frame's field of that name (a string or a number).
    pub fn room_from_fields(
        &self,
        fields: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ParamError> {
        let Some(template) = &self.template else {
            return Err(ParamError("this endpoint has no room template".into()));
        };
        template.fill(
            |param| match fields.get(param) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(_) => Err(ParamError(format!("`{param}` must be a string"))),
                None => Err(ParamError(format!("missing field `{param}`"))),
            },
            self.config.param_max_len,
        )
    }

    /// Whether a client of this endpoint may join `room`: its token's room patterns allow
    /// it, or the endpoint grants it ([`Endpoint::grants`]); and an anonymous client only
    /// where the room's namespace lets anonymous sessions in. The one rule for the upgrade
    /// and for every later join.
    ///
    /// A task's room (`task:{id}`) is its owner's, whatever the token's patterns say: only
    /// the owner and admin tokens get in.
    pub fn allows_join(
        &self,
        identity: &crate::auth::Identity,
        room: &str,
        config: &crate::config::Config,
        task_owners: &crate::tasks::manager::TaskOwners,
    ) -> bool {
        if let Some(task_id) = room
            .strip_prefix(crate::tasks::NAMESPACE)
            .and_then(|r| r.strip_prefix(':'))
        {
            return !identity.anonymous
                && (identity.admin
                    || task_owners.owner(task_id).as_deref() == Some(&*identity.user));
        }
        (identity.may_join(room) || self.grants(identity, room))
            && (!identity.anonymous || config.room_policy(room).anonymous)
    }

    /// Whether `identity` may join `room` through this endpoint without a `rooms` claim
    /// for it ([`Access::Authenticated`]).
    pub fn grants(&self, identity: &crate::auth::Identity, room: &str) -> bool {
        self.config.access == Access::Authenticated
            && !identity.anonymous
            && !room.starts_with(crate::auth::PERSONAL_PREFIX)
            && self
                .template
                .as_ref()
                .is_some_and(|t| t.matches(room, self.config.param_max_len))
    }

    fn query_names<'a>(&'a self, param: &'a str) -> Vec<&'a str> {
        match self.config.query.get(param) {
            Some(names) => names.iter().map(String::as_str).collect(),
            None => vec![param],
        }
    }
}

/// A room template: literal text and `{param}` slots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template(Vec<Part>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Param(String),
}

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let (literal, tail) = rest.split_at(open);
            let close = tail
                .find('}')
                .ok_or_else(|| format!("`{text}`: `{{` without `}}`"))?;
            let name = &tail[1..close];
            if !valid_param_name(name) {
                return Err(format!(
                    "`{text}`: `{{{name}}}` is not a parameter name (letters, digits, _)"
                ));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(literal.to_owned()));
            }
            parts.push(Part::Param(name.to_owned()));
            rest = &tail[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        for part in &parts {
            if let Part::Literal(literal) = part {
                if literal.contains('}') || !crate::protocol::valid_room_name(literal) {
                    return Err(format!(
                        "`{text}`: `{literal}` has characters a room name cannot (A-Z a-z 0-9 _ . : @ -)"
                    ));
                }
            }
        }
        if !parts.iter().any(|p| matches!(p, Part::Param(_))) {
            return Err(format!(
                "`{text}` has no `{{param}}`: every client would share one room (list it in a namespace and let clients join it instead)"
            ));
        }
        Ok(Template(parts))
    }

    fn params(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Part::Param(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// Whether `room` is a name this template makes.
    fn matches(&self, room: &str, max_len: usize) -> bool {
        fn rest_matches(parts: &[Part], room: &str, max_len: usize) -> bool {
            match parts.split_first() {
                None => room.is_empty(),
                Some((Part::Literal(text), rest)) => room
                    .strip_prefix(text.as_str())
                    .is_some_and(|tail| rest_matches(rest, tail, max_len)),
                Some((Part::Param(_), rest)) => {
                    let valid = room
                        .bytes()
                        .take_while(|b| param_byte(*b))
                        .count()
                        .min(max_len);
                    (1..=valid).any(|n| rest_matches(rest, &room[n..], max_len))
                }
            }
        }
        rest_matches(&self.0, room, max_len)
    }

    /// The room name with each parameter's value, checked: at most `max_len` bytes of
    /// `A-Z a-z 0-9 _ . @ -` (no `:`, so a value cannot reach into another namespace).
    fn fill(
        &self,
        mut value_of: impl FnMut(&str) -> Result<String, ParamError>,
        max_len: usize,
    ) -> Result<String, ParamError> {
        let mut room = String::new();
        for part in &self.0 {
            match part {
                Part::Literal(text) => room.push_str(text),
                Part::Param(name) => {
                    let value = value_of(name)?;
                    check_value(name, &value, max_len)?;
                    room.push_str(&value);
                }
            }
        }
        if !crate::protocol::valid_room_name(&room) {
            return Err(ParamError(format!(
                "the room name would be longer than 128 bytes: `{}…`",
                room.chars().take(40).collect::<String>()
            )));
        }
        Ok(room)
    }
}

fn check_value(name: &str, value: &str, max_len: usize) -> Result<(), ParamError> {
    if value.is_empty() {
        return Err(ParamError(format!("`{name}` is empty")));
    }
    if value.len() > max_len {
        return Err(ParamError(format!(
            "`{name}` is longer than {max_len} bytes"
        )));
    }
    if !value.bytes().all(param_byte) {
        return Err(ParamError(format!(
            "`{name}` may only hold A-Z a-z 0-9 _ . @ -"
        )));
    }
    Ok(())
}

/// A byte a parameter value may hold: a room name's, without `:` (so a value cannot reach
/// into another namespace).
fn param_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-')
}

fn valid_param_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The `{name}` parameters of a route path. Only plain names: actix's `{name:regex}` and
/// tail matches are refused, so a parameter is always one path segment.
fn path_params(path: &str) -> Result<Vec<String>, String> {
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    let mut params = Vec::new();
    for segment in path.split('/') {
        let Some(inner) = segment.strip_prefix('{') else {
            if segment.contains(['{', '}']) {
                return Err(format!(
                    "`{segment}`: a parameter must be a whole path segment, `{{name}}`"
                ));
            }
            continue;
        };
        let Some(name) = inner.strip_suffix('}') else {
            return Err(format!(
                "`{segment}`: a parameter must be a whole path segment, `{{name}}`"
            ));
        };
        if !valid_param_name(name) {
            return Err(format!(
                "`{{{name}}}` is not a parameter name (letters, digits, _)"
            ));
        }
        if params.iter().any(|p| p == name) {
            return Err(format!("`{{{name}}}` appears twice"));
        }
        params.push(name.to_owned());
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::dev::{Path, Url};

    fn path_with(params: &[(&'static str, &'static str)]) -> Path<Url> {
        let mut path = Path::new(Url::new("/".parse().unwrap()));
        for (k, v) in params {
            path.add_static(*k, *v);
        }
        path
    }

    #[test]
    fn a_template_fills_from_the_path_and_the_query_with_aliases() {
        let agent = EndpointConfig::new("/ws")
            .room("conversation:{conversation_id}")
            .query_aliases("conversation_id", &["conversation_id", "conversationId"])
            .compile()
            .unwrap();
        let none = path_with(&[]);
        assert_eq!(
            agent.room_for(&none, "token=x&conversationId=c-42"),
            Ok(Some("conversation:c-42".into()))
        );
        assert_eq!(
            agent.room_for(&none, "conversation_id=7"),
            Ok(Some("conversation:7".into()))
        );
        let twice = agent.room_for(&none, "conversation_id=1&conversationId=2");
        assert!(twice.unwrap_err().0.contains("more than once"));
        let missing = agent.room_for(&none, "token=x").unwrap_err();
        assert!(
            missing.0.contains("conversation_id` or `conversationId"),
            "{missing}"
        );

        let sovd = EndpointConfig::new("/ws/responses/{command_id}")
            .room("response:{command_id}")
            .framing(Framing::Raw)
            .compile()
            .unwrap();
        let path = path_with(&[("command_id", "abc")]);
        assert_eq!(sovd.room_for(&path, ""), Ok(Some("response:abc".into())));
        let fields = serde_json::json!({"action": "subscribe", "command_id": 17});
        assert_eq!(
            sovd.room_from_fields(fields.as_object().unwrap()),
            Ok("response:17".into())
        );
    }

    #[test]
    fn parameter_values_cannot_reach_another_namespace_or_grow_without_bound() {
        let e = EndpointConfig::new("/c")
            .room("conversation:{id}")
            .compile()
            .unwrap();
        let none = path_with(&[]);
        for bad in [
            "id=a:b",
            "id=user%3Aalice",
            "id=",
            "id=a%20b",
            "id=%E2%82%AC",
        ] {
            assert!(e.room_for(&none, bad).is_err(), "{bad}");
        }
        let long = format!("id={}", "x".repeat(65));
        assert!(e.room_for(&none, &long).unwrap_err().0.contains("longer"));
        assert!(e.room_for(&none, &format!("id={}", "x".repeat(64))).is_ok());
    }

    #[test]
    fn authenticated_access_grants_the_template_s_rooms_only() {
        let e = EndpointConfig::new("/r/{id}")
            .room("response:{id}")
            .access(Access::Authenticated)
            .compile()
            .unwrap();
        let claims = crate::auth::Claims {
            sub: "alice".into(),
            rooms: None,
            publish: None,
            exp: u64::MAX,
            nbf: None,
            iat: None,
            iss: None,
            aud: None,
            admin: false,
            agents: None,
        };
        let alice = crate::auth::Identity::from_claims(claims);
        assert!(e.grants(&alice, "response:abc-1"));
        assert!(!e.grants(&alice, "response:"));
        assert!(!e.grants(&alice, "response:a:b"));
        assert!(!e.grants(&alice, "conversation:abc"));
        assert!(!e.grants(&crate::auth::Identity::anonymous("c1"), "response:abc"));
        let claims_only = EndpointConfig::new("/r/{id}")
            .room("response:{id}")
            .compile()
            .unwrap();
        assert!(!claims_only.grants(&alice, "response:abc"));
    }

    #[test]
    fn bad_endpoints_are_refused_naming_the_field() {
        let field = |c: EndpointConfig| c.compile().unwrap_err().0;
        assert_eq!(field(EndpointConfig::new("ws")), "path");
        assert_eq!(
            field(EndpointConfig::new("/r/{id:\\d+}").room("r:{id}")),
            "path"
        );
        assert_eq!(field(EndpointConfig::new("/r/{id}")), "path");
        assert_eq!(field(EndpointConfig::new("/r").room("r:{a b}")), "room");
        assert_eq!(field(EndpointConfig::new("/r").room("fixed")), "room");
        assert_eq!(field(EndpointConfig::new("/r").room("r/{id}")), "room");
        assert_eq!(
            field(EndpointConfig::new("/r").framing(Framing::Raw)),
            "room"
        );
        assert_eq!(
            field(
                EndpointConfig::new("/r")
                    .room("r:{id}")
                    .query_aliases("other", &["o"])
            ),
            "query"
        );
        assert_eq!(
            field(EndpointConfig::new("/r").room("r:{id}").close_code(1000)),
            "close_code"
        );
        assert_eq!(
            field(EndpointConfig::new("/r").room("r:{id}").token_from(&[])),
            "token_from"
        );
        assert!(EndpointConfig::new("/r")
            .room("r:{id}")
            .close_code(1008)
            .compile()
            .is_ok());
    }
}
