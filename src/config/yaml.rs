//! Turns the YAML file into a validated [`Config`].
//!
//! Two passes. First the event parser of `yaml-rust2` feeds a tiny tree builder, because its own
//! `Yaml` document type drops positions and silently merges duplicate keys; our tree keeps the
//! line and column of every node so each message can point at the exact spot. Then the tree is
//! converted by hand, one mapping at a time, through [`Fields`], which refuses unknown keys up
//! front so a misspelt key is reported as a typo rather than as the required key it was meant
//! to be.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, ScanError, TScalarStyle};

use super::units::{format_size, parse_duration, parse_size};
use super::{
    Admin, Balance, CertificatePair, Cidr, Config, HealthCheck, HostPattern, HttpOptions, Limits,
    Listener, LogFormat, LogOptions, OriginPattern, Route, RouteChange, TlsOptions, Upstream,
    WsMode, WsOptions,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const GIB: usize = 1024 * MIB;

/// A configuration problem, located so an editor can jump to it.
///
/// Displayed as one line, `file:line:column: key: message`, the format compilers use, so
/// terminals and editors make it clickable and log lines stay greppable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}:{line}:{column}: {}: {}",
    one_line(file),
    one_line(key),
    one_line(message)
)]
pub struct ConfigError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based.
    pub column: usize,
    /// Dotted path of the offending key (`routes[1].upstreams[0]`), or `(syntax)`, `(root)`,
    /// `(file)` when no key applies.
    pub key: String,
    pub message: String,
}

/// Keys and values quoted in a message come from the file and may hold any character a YAML
/// escape can make (`"\P"` is U+2029): escape line breaks and controls so the message stays one
/// line, as log collectors and `file:line:` parsers expect.
pub(crate) fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !s.contains(breaks) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if breaks(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// Reads and loads a config file; relative `cert`, `key` and `ca` paths are taken relative to
/// the file's directory so a config keeps working whatever directory wsgate is started from.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let file_error = |pos: Pos, message: String| ConfigError {
        file: source.clone(),
        line: pos.line,
        column: pos.column,
        key: "(file)".into(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| {
        file_error(
            Pos { line: 1, column: 1 },
            format!("cannot read the configuration file: {e}"),
        )
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let (pos, message) = not_utf8(&bytes, e);
        file_error(pos, message)
    })?;
    load_str(text, &source, path.parent().unwrap_or(Path::new("")))
}

/// Where the first invalid byte is, counted as the YAML scanner counts (lines from 1, columns in
/// characters from 1, a leading BOM not counted), so the position is the one an editor shows.
fn not_utf8(bytes: &[u8], e: std::str::Utf8Error) -> (Pos, String) {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        let message =
            "the file is UTF-16 (it starts with a UTF-16 byte order mark); save it as UTF-8";
        return (Pos { line: 1, column: 1 }, message.into());
    }
    let (valid, rest) = bytes.split_at(e.valid_up_to());
    // `valid_up_to` is where the valid prefix ends, so this never falls back.
    let valid = std::str::from_utf8(valid).unwrap_or_default();
    let valid = valid.strip_prefix('\u{feff}').unwrap_or(valid);
    let line_start = valid.rfind('\n').map_or(0, |i| i + 1);
    let pos = Pos {
        line: valid.matches('\n').count() + 1,
        column: valid[line_start..].chars().count() + 1,
    };
    let message = format!(
        "invalid UTF-8 (byte 0x{:02x}); the file must be UTF-8",
        rest[0]
    );
    (pos, message)
}

/// Loads configuration text. `source` only names the text in messages and in `Config::source`;
/// `base_dir` is what relative file paths are resolved against.
pub fn load_str(text: &str, source: &str, base_dir: &Path) -> Result<Config, ConfigError> {
    // YAML allows a byte order mark, and some Windows editors write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    parse_tree(text)
        .and_then(|root| convert(&root, source, base_dir))
        .map_err(|e| ConfigError {
            file: source.to_string(),
            ..e
        })
}

// ---------------------------------------------------------------------------------------------
// The positioned tree
// ---------------------------------------------------------------------------------------------

/// 1-based line and column. Ordered so the builder can pick the earlier of two markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    line: usize,
    column: usize,
}

impl From<Marker> for Pos {
    /// The scanner counts lines from 1 but columns from 0.
    fn from(m: Marker) -> Self {
        Pos {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

/// Builds an error without a file name; [`load_str`] fills that in once for all of them.
fn error_at(pos: Pos, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        file: String::new(),
        line: pos.line,
        column: pos.column,
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug)]
struct Node {
    pos: Pos,
    value: Value,
}

#[derive(Debug)]
enum Value {
    Null,
    Bool(bool),
    /// A plain scalar of digits only. Kept as text: the target type decides the range, and size
    /// or duration fields read it like any other text (`0`, `4096`).
    Int(String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug)]
struct Key {
    name: String,
    pos: Pos,
}

/// Only the plain spellings of the YAML core schema's booleans and nulls are special: quoting
/// is the one way to say "this is text", and `yes`/`on` stay text as in YAML 1.2.
fn scalar_value(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::Str(text);
    }
    match text.as_str() {
        "" | "~" | "null" => Value::Null,
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        t if t.bytes().all(|b| b.is_ascii_digit()) => Value::Int(text),
        _ => Value::Str(text),
    }
}

/// `parent.key`, or `key` at the top level.
fn join(parent: &str, key: &str) -> String {
    // Keys with line breaks would break the one-line message format, so those are quoted.
    let key = if key.chars().any(char::is_control) {
        format!("{key:?}")
    } else {
        key.to_string()
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

enum Frame {
    Seq {
        pos: Pos,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        entries: Vec<(Key, Node)>,
        /// Set between a key and its value.
        key: Option<Key>,
    },
}

/// Receives parser events and assembles [`Node`]s. The receiver interface cannot fail, so the
/// first problem is parked in `error` and later events are ignored.
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    documents: usize,
    root: Option<Node>,
    error: Option<ConfigError>,
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_none() {
            if let Err(e) = self.handle(event, mark.into()) {
                self.error = Some(e);
            }
        }
    }
}

impl TreeBuilder {
    fn handle(&mut self, event: Event, pos: Pos) -> Result<(), ConfigError> {
        match event {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(error_at(
                        pos,
                        "(syntax)",
                        "more than one YAML document (---); put the whole configuration in one",
                    ));
                }
            }
            Event::Alias(_) => {
                return Err(self.error(
                    pos,
                    "aliases (*name) are not supported; write the value out",
                ))
            }
            Event::Scalar(text, style, _, tag) => {
                self.reject_tag(tag.is_some(), pos)?;
                if self.expecting_key() {
                    self.set_key(text, pos)?;
                } else {
                    // An empty value is reported by the parser wherever the next token starts,
                    // often the following line; the key it belongs to is the useful position.
                    let empty = text.is_empty() && style == TScalarStyle::Plain;
                    let value = scalar_value(text, style);
                    self.push(Node { pos, value }, empty);
                }
            }
            Event::SequenceStart(..) | Event::MappingStart(..) if self.expecting_key() => {
                return Err(self.error(pos, "only plain keys are supported, not lists or mappings"));
            }
            Event::SequenceStart(_, tag) => {
                self.reject_tag(tag.is_some(), pos)?;
                self.stack.push(Frame::Seq {
                    pos,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(_, tag) => {
                self.reject_tag(tag.is_some(), pos)?;
                self.stack.push(Frame::Map {
                    pos,
                    entries: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq { pos, items }) => Node {
                        pos,
                        value: Value::Seq(items),
                    },
                    Some(Frame::Map { pos, entries, .. }) => Node {
                        pos,
                        value: Value::Map(entries),
                    },
                    None => return Ok(()),
                };
                self.push(node, false);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    fn reject_tag(&self, tagged: bool, pos: Pos) -> Result<(), ConfigError> {
        if tagged {
            return Err(self.error(
                pos,
                "YAML tags (!tag) are not supported; quote the value to make it a string",
            ));
        }
        Ok(())
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn set_key(&mut self, name: String, key_pos: Pos) -> Result<(), ConfigError> {
        let path = self.path();
        let Some(Frame::Map { pos, entries, key }) = self.stack.last_mut() else {
            return Ok(());
        };
        if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == name) {
            return Err(error_at(
                key_pos,
                join(&path, &name),
                format!("duplicate key (first set at line {})", first.pos.line),
            ));
        }
        // For block mappings the parser marks the start after the first key; the first key is
        // where a reader sees the mapping begin.
        if entries.is_empty() && key_pos < *pos {
            *pos = key_pos;
        }
        *key = Some(Key { name, pos: key_pos });
        Ok(())
    }

    fn push(&mut self, mut node: Node, empty: bool) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => {
                if let Some(key) = key.take() {
                    if empty {
                        node.pos = key.pos;
                    }
                    entries.push((key, node));
                }
            }
        }
    }

    /// Path of the node being built, the nearest thing to a key a syntax error can be given.
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => path = format!("{path}[{}]", items.len()),
                Frame::Map { key: Some(k), .. } => path = join(&path, &k.name),
                Frame::Map { key: None, .. } => {}
            }
        }
        path
    }

    fn error(&self, pos: Pos, message: &str) -> ConfigError {
        let path = self.path();
        let key = if path.is_empty() {
            "(syntax)".to_string()
        } else {
            path
        };
        error_at(pos, key, message)
    }
}

fn parse_tree(text: &str) -> Result<Node, ConfigError> {
    let mut builder = TreeBuilder::default();
    let parsed: Result<(), ScanError> = Parser::new_from_str(text).load(&mut builder, true);
    if let Some(e) = builder.error {
        return Err(e);
    }
    if let Err(e) = parsed {
        return Err(builder.error((*e.marker()).into(), e.info()));
    }
    match builder.root {
        Some(root) if !matches!(root.value, Value::Null) => Ok(root),
        _ => Err(error_at(
            Pos { line: 1, column: 1 },
            "(root)",
            "empty configuration",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading typed values out of the tree
// ---------------------------------------------------------------------------------------------

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// A node and the dotted path that names it in messages.
struct Field<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> Field<'a> {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        let key = if self.path.is_empty() {
            "(root)"
        } else {
            &self.path
        };
        error_at(self.node.pos, key, message)
    }

    /// What was found, for "expected X, found Y" messages.
    fn found(&self) -> String {
        match &self.node.value {
            Value::Null => "nothing".into(),
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int(n) => format!("the number {n}"),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Seq(_) => "a list".into(),
            Value::Map(_) => "a mapping".into(),
        }
    }

    /// Numbers count as text here: a port-like `5000` or a size `4096` is still read as text by
    /// the field's own parser, which gives the precise message.
    fn text(&self, expected: &str) -> Result<&'a str> {
        match &self.node.value {
            Value::Str(s) | Value::Int(s) => Ok(s),
            // Only where text is expected can quoting be the fix (`log_level: "true"`).
            Value::Bool(_) => Err(self.error(format!(
                "expected {expected}, found {} (quote it if you mean text)",
                self.found()
            ))),
            _ => Err(self.error(format!("expected {expected}, found {}", self.found()))),
        }
    }

    fn string(&self) -> Result<String> {
        let s = self.text("a string")?;
        if s.trim().is_empty() {
            return Err(self.error("must not be empty"));
        }
        Ok(s.to_string())
    }

    /// Runs one of the plain-text parsers (units, URLs, paths) and locates its message here.
    fn parse<T>(&self, parser: impl FnOnce(&str) -> Result<T, String>) -> Result<T> {
        parser(self.text("a string")?).map_err(|m| self.error(m))
    }

    fn bool(&self) -> Result<bool> {
        match self.node.value {
            Value::Bool(b) => Ok(b),
            _ => Err(self.error(format!("expected true or false, found {}", self.found()))),
        }
    }

    /// A limit: a whole number, where 0 means "no limit".
    fn count_or_zero(&self) -> Result<u32> {
        self.whole_number(0, "0 (no limit)")
    }

    /// A threshold such as `unhealthy_after`: zero would mean "before any probe", so 1 is the
    /// smallest meaningful value.
    fn count(&self) -> Result<u32> {
        self.whole_number(1, "1")
    }

    /// A `u32` of at least `min`; `min_text` is how messages write `min`.
    fn whole_number(&self, min: u32, min_text: &str) -> Result<u32> {
        let Value::Int(text) = &self.node.value else {
            return Err(self.error(format!(
                "expected a whole number from {min_text} to {}, found {}",
                u32::MAX,
                self.found()
            )));
        };
        match text.parse::<u32>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(self.error(format!(
                "{text} is out of range: must be between {min_text} and {}",
                u32::MAX
            ))),
        }
    }

    fn duration(&self) -> Result<Duration> {
        parse_duration(self.text("a duration such as 30s")?).map_err(|m| self.error(m))
    }

    /// For timeouts, where zero would fail every request instead of disabling anything.
    fn nonzero_duration(&self) -> Result<Duration> {
        let d = self.duration()?;
        if d.is_zero() {
            return Err(self.error("must be longer than 0"));
        }
        Ok(d)
    }

    /// A size within `range`; `why` explains a bound that is not obvious.
    fn size_in(&self, range: RangeInclusive<usize>, why: &str) -> Result<usize> {
        let n = parse_size(self.text("a size such as 64KiB")?).map_err(|m| self.error(m))?;
        if !range.contains(&n) {
            return Err(self.error(format!(
                "{} is out of range: must be between {} and {}{why}",
                format_size(n),
                format_size(*range.start()),
                format_size(*range.end()),
            )));
        }
        Ok(n)
    }

    /// One of a fixed set of words.
    fn choice<T: Copy>(&self, options: &[(&str, T)]) -> Result<T> {
        let s = self.text("a string")?;
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, value)) => Ok(*value),
            None => {
                let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
                Err(self.error(format!(
                    "invalid value {s:?} (expected one of: {})",
                    names.join(", ")
                )))
            }
        }
    }

    fn items(&self) -> Result<Vec<Field<'a>>> {
        match &self.node.value {
            Value::Seq(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, node)| Field {
                    node,
                    path: format!("{}[{i}]", self.path),
                })
                .collect()),
            _ => Err(self.error(format!("expected a list, found {}", self.found()))),
        }
    }

    fn list<T>(&self, item: impl FnMut(&Field<'a>) -> Result<T>) -> Result<Vec<T>> {
        self.items()?.iter().map(item).collect()
    }

    /// `allowed` is given in groups so shared key sets (the WebSocket options) are listed once.
    fn map(&self, allowed: &[&[&'static str]]) -> Result<Fields<'a>> {
        Fields::new(self, allowed.concat())
    }
}

/// One mapping whose keys have all been checked against the allowed set, so reading a key is a
/// plain lookup and an absent key simply means "use the default".
struct Fields<'a> {
    node: &'a Node,
    path: String,
    entries: &'a [(Key, Node)],
    allowed: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(field: &Field<'a>, allowed: Vec<&'static str>) -> Result<Self> {
        let Value::Map(entries) = &field.node.value else {
            return Err(field.error(format!("expected a mapping, found {}", field.found())));
        };
        if let Some((key, _)) = entries
            .iter()
            .find(|(k, _)| !allowed.contains(&k.name.as_str()))
        {
            return Err(error_at(
                key.pos,
                join(&field.path, &key.name),
                format!("unknown key (allowed here: {})", allowed.join(", ")),
            ));
        }
        Ok(Fields {
            node: field.node,
            path: field.path.clone(),
            entries,
            allowed,
        })
    }

    /// The value of `key`, or `None` when it is absent or null: null means "default".
    fn get(&self, key: &str) -> Option<Field<'a>> {
        debug_assert!(
            self.allowed.contains(&key),
            "{key} is not in the allowed list"
        );
        self.entries
            .iter()
            .find(|(k, node)| k.name == key && !matches!(node.value, Value::Null))
            .map(|(_, node)| Field {
                node,
                path: join(&self.path, key),
            })
    }

    /// A missing key is reported at the mapping that should contain it; a key present with no
    /// value at the key itself.
    fn required(&self, key: &str) -> Result<Field<'a>> {
        if let Some(field) = self.get(key) {
            return Ok(field);
        }
        let path = join(&self.path, key);
        match self.entries.iter().find(|(k, _)| k.name == key) {
            Some((k, _)) => Err(error_at(k.pos, path, "needs a value")),
            None => Err(error_at(self.node.pos, path, "missing required key")),
        }
    }

    fn opt<T>(&self, key: &str, read: impl FnOnce(&Field<'a>) -> Result<T>) -> Result<Option<T>> {
        self.get(key).map(|field| read(&field)).transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// The schema
// ---------------------------------------------------------------------------------------------

const TOP_KEYS: &[&str] = &[
    "listen",
    "health_path",
    "sample_page",
    "shutdown_grace",
    "drain_delay",
    "log_level",
    "log_format",
    "http",
    "websockets",
    "routes",
    "admin",
    "on_route_change",
    "close_spread",
    "max_connection_age",
    "limits",
    "trusted_proxies",
];
const ADMIN_KEYS: &[&str] = &["address"];
const LISTEN_KEYS: &[&str] = &["address", "tls", "proxy_protocol"];
const LIMIT_KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "connection_rate_per_ip",
    "message_rate",
];
const TLS_KEYS: &[&str] = &["certificates"];
const CERT_KEYS: &[&str] = &["cert", "key"];
const HTTP_KEYS: &[&str] = &[
    "header_read_timeout",
    "tls_handshake_timeout",
    "max_header_size",
    "keep_alive",
];
/// Accepted both under `websockets:` and on each route.
const WS_KEYS: &[&str] = &[
    "keep_alive_interval",
    "keep_alive_timeout",
    "close_timeout",
    "receive_buffer_size",
    "max_message_size",
    "allowed_origins",
    "require_origin",
];
const ROUTE_KEYS: &[&str] = &[
    "path",
    "host",
    "websocket",
    "upstreams",
    "balance",
    "health_check",
    "subprotocols",
    "upstream_timeout",
    "response_idle_timeout",
    "ca",
];
const HEALTH_KEYS: &[&str] = &[
    "path",
    "interval",
    "timeout",
    "unhealthy_after",
    "healthy_after",
];

const MODES: &[(&str, WsMode)] = &[
    ("echo", WsMode::Echo),
    ("relay", WsMode::Relay),
    ("passthrough", WsMode::Passthrough),
    ("reject", WsMode::Reject),
];
const BALANCES: &[(&str, Balance)] = &[
    ("round_robin", Balance::RoundRobin),
    ("least_connections", Balance::LeastConnections),
    ("ip_hash", Balance::IpHash),
    ("cookie", Balance::Cookie),
];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];

fn convert(root: &Node, source: &str, base_dir: &Path) -> Result<Config> {
    let top = Field {
        node: root,
        path: String::new(),
    }
    .map(&[TOP_KEYS])?;

    let (websockets, websockets_enabled) = top
        .opt("websockets", |f| {
            let map = f.map(&[&["enabled"], WS_KEYS])?;
            let enabled = map.opt("enabled", Field::bool)?.unwrap_or(true);
            Ok((ws_options(&map, &WsOptions::default())?, enabled))
        })?
        .unwrap_or_else(|| (WsOptions::default(), true));

    let listen = listeners(&top.required("listen")?, base_dir)?;
    let shutdown_grace = top
        .opt("shutdown_grace", Field::duration)?
        .unwrap_or(Duration::from_secs(30));
    let drain_delay = top
        .opt("drain_delay", |f| {
            let delay = f.duration()?;
            // The drain is counted within the grace period, so one as long would leave no time
            // to close anything, and the shutdown would cut the drain short.
            if !delay.is_zero() && delay >= shutdown_grace {
                return Err(f.error(format!(
                    "drain_delay ({}) must be shorter than shutdown_grace ({}), which counts it",
                    super::format_duration(delay),
                    super::format_duration(shutdown_grace)
                )));
            }
            Ok(delay)
        })?
        .unwrap_or(Duration::ZERO);

    let log_defaults = LogOptions::default();
    let config = Config {
        source: source.to_string(),
        health_path: top
            .opt("health_path", |f| f.parse(url_path))?
            .unwrap_or_else(|| "/healthz".into()),
        sample_page: top.opt("sample_page", |f| f.parse(url_path))?,
        shutdown_grace,
        drain_delay,
        http: top.opt("http", http_options)?.unwrap_or_default(),
        routes: top
            .opt("routes", |f| {
                routes(f, &websockets, websockets_enabled, base_dir)
            })?
            .unwrap_or_default(),
        websockets,
        websockets_enabled,
        on_route_change: top
            .opt("on_route_change", |f| {
                f.choice(&[("keep", RouteChange::Keep), ("drain", RouteChange::Drain)])
            })?
            .unwrap_or(RouteChange::Keep),
        close_spread: top
            .opt("close_spread", |f| {
                let spread = f.duration()?;
                // Shutdown sends its 1001s over the spread once the drain delay is over: a
                // spread that outlasts the grace period would leave the last sessions to be cut
                // without one.
                if !spread.is_zero() && drain_delay + spread >= shutdown_grace {
                    return Err(f.error(format!(
                        "close_spread ({}) must end before shutdown_grace ({}) does, counted after drain_delay ({})",
                        super::format_duration(spread),
                        super::format_duration(shutdown_grace),
                        super::format_duration(drain_delay)
                    )));
                }
                Ok(spread)
            })?
            .unwrap_or(Duration::ZERO),
        max_connection_age: top
            .opt("max_connection_age", Field::duration)?
            .unwrap_or(Duration::ZERO),
        limits: top
            .opt("limits", |f| {
                let map = f.map(&[LIMIT_KEYS])?;
                let number = |key: &str| -> Result<u32> {
                    Ok(map.opt(key, Field::count_or_zero)?.unwrap_or(0))
                };
                Ok(Limits {
                    max_connections: number("max_connections")? as usize,
                    max_connections_per_ip: number("max_connections_per_ip")? as usize,
                    connection_rate_per_ip: number("connection_rate_per_ip")?,
                    message_rate: number("message_rate")?,
                })
            })?
            .unwrap_or_default(),
        trusted_proxies: top
            .opt("trusted_proxies", |f| f.list(|item| item.parse(cidr)))?
            .unwrap_or_default(),
        admin: top.opt("admin", |f| {
            let map = f.map(&[ADMIN_KEYS])?;
            let field = map.required("address")?;
            let address = field.parse(listen_address)?;
            match clash(&listen, address, "admin address") {
                Some(message) => Err(field.error(message)),
                None => Ok(Admin {
                    address,
                    line: field.node.pos.line,
                    column: field.node.pos.column,
                }),
            }
        })?,
        listen,
        log: LogOptions {
            level: top
                .opt("log_level", |f| f.parse(log_filter))?
                .unwrap_or(log_defaults.level),
            format: top
                .opt("log_format", |f| f.choice(LOG_FORMATS))?
                .unwrap_or(log_defaults.format),
        },
    };
    // The route a request spelled `path` would be routed to by its path alone; health and the
    // page match the request's path as sent, and routes as decoded, so both spellings count.
    let route_at = |path: &str| {
        let routed = crate::router::routing_path(path).ok()?;
        config.routes.iter().position(|r| r.path == *routed)
    };
    // The page answers GETs at its path before any route is looked at: at a route's path it
    // would answer that route's GETs with HTML, and at the health path, the balancer's.
    if let (Some(page), Some(field)) = (&config.sample_page, top.get("sample_page")) {
        let hidden = if *page == config.health_path {
            Some("the health_path".to_owned())
        } else {
            route_at(page)
                .map(|i| format!("the path of the route at line {}", config.routes[i].line))
        };
        if let Some(what) = hidden {
            return Err(field.error(format!(
                "sample_page {page} is also {what}, which the page would hide"
            )));
        }
    }
    // Health answers its path before any route is looked at, upgrades included: a route at the
    // same path would have every upgrade to it answered `200 ok`. The default health_path is
    // such a clash too, reported at the route's path, as there is no health_path key to name.
    if let Some(i) = route_at(&config.health_path) {
        let health = &config.health_path;
        let line = config.routes[i].line;
        return Err(match top.get("health_path") {
            Some(field) => field.error(format!(
                "health_path {health} is also the path of the route at line {line}, which health would hide"
            )),
            None => route_path_field(&top, i)?.error(format!(
                "health_path (by default {health}) is also this route's path, which health would hide; set health_path to another path"
            )),
        });
    }
    Ok(config)
}

/// `routes[i].path`, to report an error found once the routes are read.
fn route_path_field<'a>(top: &Fields<'a>, i: usize) -> Result<Field<'a>> {
    let routes = top.required("routes")?.items()?;
    let route = routes[i].map(&[ROUTE_KEYS, WS_KEYS])?;
    route.required("path")
}

fn listeners(field: &Field, base_dir: &Path) -> Result<Vec<Listener>> {
    let items = field.items()?;
    if items.is_empty() {
        return Err(field.error("at least one listener is required"));
    }
    let mut listeners: Vec<Listener> = Vec::new();
    for item in &items {
        let map = item.map(&[LISTEN_KEYS])?;
        let address_field = map.required("address")?;
        let address = address_field.parse(listen_address)?;
        if let Some(message) = clash(&listeners, address, "listen address") {
            return Err(address_field.error(message));
        }
        let tls = map.opt("tls", |f| tls_options(f, base_dir))?;
        let proxy_protocol = map.opt("proxy_protocol", Field::bool)?.unwrap_or(false);
        listeners.push(Listener {
            address,
            tls,
            proxy_protocol,
            line: address_field.node.pos.line,
            column: address_field.node.pos.column,
        });
    }
    Ok(listeners)
}

/// Why `address` (`what`) cannot be bound beside the listeners already listed, if it cannot.
fn clash(listeners: &[Listener], address: SocketAddr, what: &str) -> Option<String> {
    let l = listeners.iter().find(|l| overlap(l.address, address))?;
    Some(if l.address == address {
        format!(
            "{what} {address} is already taken by the listen address at line {}",
            l.line
        )
    } else {
        format!(
            "{what} {address} overlaps listen address {} at line {} ({})",
            l.address,
            l.line,
            why_overlap(l.address, address)
        )
    })
}

/// Whether binding both addresses would fail: the same port where one address includes the
/// other. A wildcard takes the port on every address of its family, and `[::]` on IPv4 as
/// well, since listeners leave IPV6_V6ONLY at the system default, which is off on Linux.
/// Port 0 asks the OS for a fresh port each time, so it never collides.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    use std::net::IpAddr;
    // `[::ffff:127.0.0.1]` is bound as 127.0.0.1.
    let plain = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let covers = |wide: IpAddr, narrow: IpAddr| {
        wide == narrow
            || match wide {
                IpAddr::V4(w) => w.is_unspecified() && narrow.is_ipv4(),
                IpAddr::V6(w) => w.is_unspecified(),
            }
    };
    let (x, y) = (plain(a.ip()), plain(b.ip()));
    a.port() != 0 && a.port() == b.port() && (covers(x, y) || covers(y, x))
}

/// The reason two different addresses [`overlap`], for the message.
fn why_overlap(a: SocketAddr, b: SocketAddr) -> &'static str {
    let v6_any = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    if (v6_any(a) && b.is_ipv4()) || (v6_any(b) && a.is_ipv4()) {
        "[::] also takes the port on IPv4"
    } else if a.ip().is_unspecified() || b.ip().is_unspecified() {
        "a wildcard address takes the port on every address of its family"
    } else {
        "both are the same address"
    }
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
fn cidr(s: &str) -> Result<Cidr, String> {
    let invalid = || format!("invalid address range {s:?} (use CIDR, e.g. 10.0.0.0/8 or ::1/128)");
    let (ip, prefix) = match s.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (s, None),
    };
    let network: std::net::IpAddr = ip.parse().map_err(|_| invalid())?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(invalid)?,
        None => max,
    };
    Ok(Cidr { network, prefix })
}

/// Checked here, at its line: tracing-subscriber drops a directive it cannot parse with one
/// unformatted line on stderr, so `wsgate=loud` used to start a gateway that logged nothing.
/// It also reads a bare word as a target to log at every level, so `warning` (Python's and
/// syslog's name) or `infoo` would log nothing either: here a directive without `=` must be a
/// level, and a target at every level is written `wsgate=trace`.
fn log_filter(s: &str) -> Result<String, String> {
    let invalid = |why: String| {
        format!("invalid log filter {s:?}: {why} (use a level such as info, or target=level pairs such as wsgate=debug,hyper=info)")
    };
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map_err(|e| invalid(e.to_string()))?;
    // EnvFilter has already refused commas inside a span's fields, so a plain split is exact;
    // a level, when given, is what follows the last `=`, outside any `[...]` or `{...}`.
    let bare = s.split(',').map(str::trim).find(|d| {
        let level_given = d
            .rsplit_once('=')
            .is_some_and(|(_, level)| !level.contains([']', '}']));
        !d.is_empty()
            && !level_given
            && d.parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
    });
    match bare {
        Some(word) => Err(invalid(format!(
            "{word:?} is not a level (off, error, warn, info, debug, trace) and has none"
        ))),
        None => Ok(s.to_owned()),
    }
}

/// `localhost` is accepted because it is what people type, but bound as 127.0.0.1 so wsgate
/// never depends on resolver order (which may yield ::1 first) to decide where it listens.
fn listen_address(s: &str) -> Result<SocketAddr, String> {
    let invalid = || {
        format!("invalid listen address {s:?} (use ip:port, e.g. 127.0.0.1:8080, [::1]:8080 or localhost:8080)")
    };
    match s.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .map_err(|_| invalid()),
        None => s.parse().map_err(|_| invalid()),
    }
}

fn tls_options(field: &Field, base_dir: &Path) -> Result<TlsOptions> {
    let map = field.map(&[TLS_KEYS])?;
    let list = map.required("certificates")?;
    let items = list.items()?;
    if items.is_empty() {
        return Err(list.error("at least one certificate is required"));
    }
    let certificates = items
        .iter()
        .map(|item| {
            let pair = item.map(&[CERT_KEYS])?;
            let cert_field = pair.required("cert")?;
            let cert = existing_file(&cert_field, base_dir, "certificate")?;
            let key_field = pair.required("key")?;
            let key = existing_file(&key_field, base_dir, "private key")?;
            // Parsed as serving parses them, so that a bad file or a key that fits no
            // certificate is reported at its key, by `wsgate check` too.
            let chain = crate::tls::read_chain(&cert).map_err(|m| cert_field.error(m))?;
            crate::tls::with_key(chain, &cert, &key, &crate::tls::provider())
                .map_err(|m| key_field.error(m))?;
            Ok(CertificatePair { cert, key })
        })
        .collect::<Result<_>>()?;
    Ok(TlsOptions { certificates })
}

/// Checked at load time so a typo in a path fails the (re)load with a position, instead of the
/// first TLS handshake failing with a bare I/O error.
fn existing_file(field: &Field, base_dir: &Path, what: &str) -> Result<PathBuf> {
    let path = base_dir.join(field.string()?);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(field.error(format!("{what} path is not a file: {}", path.display()))),
        Err(_) => Err(field.error(format!("{what} file not found: {}", path.display()))),
    }
}

fn http_options(field: &Field) -> Result<HttpOptions> {
    let map = field.map(&[HTTP_KEYS])?;
    let d = HttpOptions::default();
    Ok(HttpOptions {
        header_read_timeout: map
            .opt("header_read_timeout", Field::nonzero_duration)?
            .unwrap_or(d.header_read_timeout),
        tls_handshake_timeout: map
            .opt("tls_handshake_timeout", Field::nonzero_duration)?
            .unwrap_or(d.tls_handshake_timeout),
        max_header_size: map
            .opt("max_header_size", |f| {
                f.size_in(8 * KIB..=MIB, " (hyper's smallest read buffer is 8KiB)")
            })?
            .unwrap_or(d.max_header_size),
        keep_alive: map.opt("keep_alive", Field::bool)?.unwrap_or(d.keep_alive),
    })
}

/// Shared by `websockets:` (over the built-in defaults) and routes (over the global values), so
/// a route override can only ever mean the same thing as the global key.
fn ws_options(map: &Fields, base: &WsOptions) -> Result<WsOptions> {
    Ok(WsOptions {
        keep_alive_interval: map
            .opt("keep_alive_interval", Field::duration)?
            .unwrap_or(base.keep_alive_interval),
        keep_alive_timeout: map
            .opt("keep_alive_timeout", Field::duration)?
            .unwrap_or(base.keep_alive_timeout),
        close_timeout: map
            .opt("close_timeout", Field::duration)?
            .unwrap_or(base.close_timeout),
        receive_buffer_size: map
            .opt("receive_buffer_size", |f| f.size_in(256..=16 * MIB, ""))?
            .unwrap_or(base.receive_buffer_size),
        max_message_size: map
            .opt("max_message_size", |f| {
                f.size_in(125..=GIB, " (control frames carry up to 125 bytes)")
            })?
            .unwrap_or(base.max_message_size),
        allowed_origins: map
            .opt("allowed_origins", |f| {
                f.list(|item| item.parse(origin_pattern))
            })?
            .unwrap_or_else(|| base.allowed_origins.clone()),
        require_origin: map
            .opt("require_origin", Field::bool)?
            .unwrap_or(base.require_origin),
    })
}

fn routes(field: &Field, global: &WsOptions, enabled: bool, base_dir: &Path) -> Result<Vec<Route>> {
    let mut routes: Vec<Route> = Vec::new();
    for (i, item) in field.items()?.iter().enumerate() {
        let route = route(item, global, enabled, base_dir)?;
        if let Some(first) = routes
            .iter()
            .position(|r| r.host == route.host && r.path == route.path)
        {
            let host = route
                .host
                .as_ref()
                .map_or_else(|| "any host".to_string(), |h| format!("host {h}"));
            return Err(item.error(format!(
                "duplicate route: path {} on {host} is already routed by routes[{first}] (line {}); routes[{i}] would never match",
                route.path, routes[first].line
            )));
        }
        routes.push(route);
    }
    Ok(routes)
}

fn route(item: &Field, global: &WsOptions, enabled: bool, base_dir: &Path) -> Result<Route> {
    let map = item.map(&[ROUTE_KEYS, WS_KEYS])?;
    let path = map.required("path")?.parse(route_path)?;
    let host = map.opt("host", |f| f.parse(host_pattern))?;
    let upstreams = map
        .opt("upstreams", |f| f.list(|u| u.parse(upstream)))?
        .unwrap_or_default();

    let websocket = match map.get("websocket") {
        Some(field) => {
            let mode = field.choice(MODES)?;
            if !enabled && matches!(mode, WsMode::Echo | WsMode::Relay) {
                return Err(field.error(format!(
                    "websockets.enabled is false: wsgate does no WebSocket processing, so this route cannot {}; use passthrough or reject",
                    mode.as_str()
                )));
            }
            if matches!(mode, WsMode::Relay | WsMode::Passthrough) && upstreams.is_empty() {
                return Err(item.error(format!(
                    "websocket: {} needs upstreams to forward to",
                    mode.as_str()
                )));
            }
            mode
        }
        None => match (upstreams.is_empty(), enabled) {
            (true, true) => WsMode::Echo,
            (false, true) => WsMode::Relay,
            (false, false) => WsMode::Passthrough,
            (true, false) => {
                return Err(item.error(
                    "websockets.enabled is false and this route has no upstreams, so it has nothing to serve; add upstreams or set websocket: reject",
                ))
            }
        },
    };

    // A list that could never be used would read as if it were: refused where no handshake of
    // wsgate's ever reads it.
    if let Some(field) = map.get("subprotocols") {
        match websocket {
            WsMode::Passthrough => return Err(field.error(
                "passthrough leaves the WebSocket handshake to the app, so wsgate cannot choose subprotocols here; let the app choose, or use relay",
            )),
            WsMode::Reject => return Err(field.error(
                "a reject route refuses every upgrade, so it never negotiates a subprotocol; remove subprotocols or use echo or relay",
            )),
            WsMode::Echo | WsMode::Relay => {}
        }
    }

    let health_check = match map.get("health_check") {
        Some(field) if upstreams.is_empty() => {
            return Err(field.error("a health check needs upstreams to check"))
        }
        Some(field) => Some(health_check(&field)?),
        None => None,
    };

    Ok(Route {
        path,
        host,
        websocket,
        upstreams,
        balance: map
            .opt("balance", |f| f.choice(BALANCES))?
            .unwrap_or(Balance::RoundRobin),
        health_check,
        subprotocols: map
            .opt("subprotocols", |f| f.list(|p| p.parse(token)))?
            .unwrap_or_default(),
        upstream_timeout: map
            .opt("upstream_timeout", Field::nonzero_duration)?
            .unwrap_or(Duration::from_secs(30)),
        // nginx's proxy_read_timeout default: an app that stops mid-body is cut after a
        // minute rather than holding the client (and a pooled connection) forever.
        response_idle_timeout: map
            .opt("response_idle_timeout", Field::duration)?
            .map_or(Some(Duration::from_secs(60)), |d| {
                (!d.is_zero()).then_some(d)
            }),
        ca: map.opt("ca", |f| {
            let path = existing_file(f, base_dir, "CA")?;
            // Read as the upstream connector reads it, so `wsgate check` refuses what it would.
            crate::upstream::connect::read_ca(&path).map_err(|m| f.error(m))?;
            Ok(path)
        })?,
        ws: ws_options(&map, global)?,
        line: item.node.pos.line,
    })
}

fn health_check(field: &Field) -> Result<HealthCheck> {
    let map = field.map(&[HEALTH_KEYS])?;
    let check = HealthCheck {
        path: map.required("path")?.parse(url_path)?,
        interval: map
            .opt("interval", Field::nonzero_duration)?
            .unwrap_or(Duration::from_secs(5)),
        timeout: map
            .opt("timeout", Field::nonzero_duration)?
            .unwrap_or(Duration::from_secs(2)),
        unhealthy_after: map.opt("unhealthy_after", Field::count)?.unwrap_or(3),
        healthy_after: map.opt("healthy_after", Field::count)?.unwrap_or(2),
    };
    // Probes do not overlap, so a timeout beyond the interval would silently stretch it.
    if check.timeout > check.interval {
        let at = map.get("timeout").or_else(|| map.get("interval"));
        return Err(at.as_ref().unwrap_or(field).error(format!(
            "timeout ({}) must not be longer than interval ({})",
            super::format_duration(check.timeout),
            super::format_duration(check.interval)
        )));
    }
    Ok(check)
}

// ---------------------------------------------------------------------------------------------
// Value syntaxes
// ---------------------------------------------------------------------------------------------

/// Request paths (`path`, `health_path`, ...). A `?` or `#` could never match a request path,
/// so it is refused rather than left as a route that silently never matches.
fn url_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("invalid path {s:?}: must start with /"));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
    {
        return Err(format!(
            "invalid path {s:?}: spaces, query strings (?) and fragments (#) are not allowed"
        ));
    }
    Ok(s.to_string())
}

/// A route's path as requests are routed by it (decoded, slashes merged), so `/caf%C3%A9` and
/// `/café` are one route, and one that no request could be routed to is an error here.
fn route_path(s: &str) -> Result<String, String> {
    let path = url_path(s)?;
    match crate::router::routing_path(&path) {
        Ok(routed) => Ok(routed.into_owned()),
        Err(why) => Err(format!(
            "invalid path {s:?}: {why} (requests are refused for one, so the route could never match)"
        )),
    }
}

/// RFC 7230 `token`, the syntax of `Sec-WebSocket-Protocol` values.
fn token(s: &str) -> Result<String, String> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if s.is_empty() || !s.chars().all(tchar) {
        return Err(format!(
            "invalid subprotocol {s:?}: must be an HTTP token (letters, digits and !#$%&'*+-.^_`|~, no spaces or commas)"
        ));
    }
    Ok(s.to_string())
}

/// DNS-style names only (letters, digits, `-`, `_`, dots between non-empty labels); IPv4
/// literals pass too. Rejecting everything else catches pasted URLs and stray ports early.
fn check_hostname(host: &str, whole: &str) -> Result<(), String> {
    if !crate::router::is_dns_name(host) {
        return Err(format!("invalid host name {host:?} in {whole:?}"));
    }
    Ok(())
}

fn host_pattern(s: &str) -> Result<HostPattern, String> {
    if s.contains("://") {
        return Err(format!(
            "host {s:?} must be a bare host name, without a scheme"
        ));
    }
    // An IPv6 literal, bracketed as in a Host header (bare is accepted too), in the canonical
    // form the request's host is put in before matching.
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(v6) = inner.parse::<Ipv6Addr>() {
        return Ok(HostPattern {
            host: format!("[{v6}]"),
            wildcard: false,
        });
    }
    if s.starts_with('[') {
        return Err(format!("invalid IPv6 address in host {s:?}"));
    }
    if s.contains(':') {
        return Err(format!(
            "host {s:?} must not include a port (routes match on the host name only)"
        ));
    }
    let lower = s.to_ascii_lowercase();
    let (wildcard, host) = match lower.strip_prefix("*.") {
        Some(parent) => (true, parent),
        None => (false, lower.as_str()),
    };
    check_hostname(host, s)?;
    Ok(HostPattern {
        host: host.to_string(),
        wildcard,
    })
}

/// The parts of `scheme://host[:port]rest` shared by upstream URLs and origin patterns.
struct UrlParts<'s> {
    /// Lowercase.
    scheme: String,
    /// Lowercase; IPv6 literals without their brackets, so the host can be handed to a socket
    /// connect or a TLS server name as is.
    host: String,
    ipv6: bool,
    port: Option<u16>,
    /// Everything after the authority: empty or starting with `/`, `?` or `#`.
    rest: &'s str,
}

fn split_url(s: &str) -> Result<UrlParts<'_>, String> {
    let Some((scheme, after)) = s.split_once("://") else {
        return Err(format!(
            "{s:?} is not a URL (expected scheme://host[:port])"
        ));
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, rest) = after.split_at(end);
    if authority.contains('@') {
        return Err(format!("user names and passwords are not allowed in {s:?}"));
    }
    let (host, ipv6, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (addr, after_addr) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("missing ] after the IPv6 address in {s:?}"))?;
            addr.parse::<Ipv6Addr>()
                .map_err(|_| format!("invalid IPv6 address {addr:?} in {s:?}"))?;
            let port = match after_addr {
                "" => None,
                _ => Some(after_addr.strip_prefix(':').ok_or_else(|| {
                    format!("unexpected {after_addr:?} after the IPv6 address in {s:?}")
                })?),
            };
            (addr, true, port)
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, false, Some(port)),
            None => (authority, false, None),
        },
    };
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    let port = port
        .map(|p| match p.parse::<u16>() {
            Ok(port) if port != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Ok(port),
            _ => Err(format!("invalid port {p:?} in {s:?}")),
        })
        .transpose()?;
    Ok(UrlParts {
        scheme: scheme.to_ascii_lowercase(),
        host: host.to_ascii_lowercase(),
        ipv6,
        port,
        rest,
    })
}

/// ws/wss are accepted as spellings of http/https because wsgate speaks HTTP to every upstream
/// first (the upgrade is an HTTP request); only the TLS bit survives.
fn upstream(s: &str) -> Result<Upstream, String> {
    let url = split_url(s)?;
    let tls = match url.scheme.as_str() {
        "http" | "ws" => false,
        "https" | "wss" => true,
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in {s:?} (use http, https, ws or wss)"
            ))
        }
    };
    if !url.ipv6 {
        check_hostname(&url.host, s)?;
    }
    if url.rest.contains(['?', '#']) {
        return Err(format!(
            "query strings and fragments are not allowed in upstream URLs: {s:?}"
        ));
    }
    if url
        .rest
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("spaces are not allowed in upstream URLs: {s:?}"));
    }
    Ok(Upstream {
        url: s.to_string(),
        tls,
        host: url.host,
        port: url.port.unwrap_or(if tls { 443 } else { 80 }),
        base_path: url.rest.trim_end_matches('/').to_string(),
    })
}

fn origin_pattern(s: &str) -> Result<OriginPattern, String> {
    if s.trim() == "*" {
        return Err("\"*\" is not an origin; use an empty list to allow every origin".to_string());
    }
    let url = split_url(s)?;
    let default_port = match url.scheme.as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        other => {
            return Err(format!(
                "unsupported scheme {other:?} in origin {s:?} (use http or https)"
            ))
        }
    };
    // An Origin header never carries a path; a lone trailing slash is a harmless habit.
    if !url.rest.is_empty() && url.rest != "/" {
        return Err(format!(
            "an origin is scheme://host[:port] without a path: {s:?}"
        ));
    }
    let (wildcard, host) = match url.host.strip_prefix("*.") {
        Some(parent) if !url.ipv6 => (true, parent.to_string()),
        // In the form `ws::origin::parse` gives the header's: canonical, without brackets.
        _ if url.ipv6 => match url.host.parse::<Ipv6Addr>() {
            Ok(addr) => (false, addr.to_string()),
            Err(_) => return Err(format!("invalid IPv6 address in {s:?}")),
        },
        _ => (false, url.host.clone()),
    };
    if !url.ipv6 {
        check_hostname(&host, s)?;
    }
    Ok(OriginPattern {
        scheme: url.scheme,
        host,
        port: url.port.unwrap_or(default_port),
        wildcard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn load(yaml: &str) -> Result<Config> {
        load_str(yaml, "test.yaml", Path::new(""))
    }

    fn err(yaml: &str) -> ConfigError {
        match load(yaml) {
            Ok(config) => panic!("expected an error, got {config:#?}"),
            Err(e) => e,
        }
    }

    /// Asserts the position and key exactly and that the message mentions `needle`.
    fn assert_err(e: &ConfigError, line: usize, column: usize, key: &str, needle: &str) {
        assert_eq!(
            (e.line, e.column, e.key.as_str()),
            (line, column, key),
            "wrong location in: {e}"
        );
        assert!(e.message.contains(needle), "{needle:?} not in: {e}");
    }

    const LISTEN: &str = "listen:\n  - address: 127.0.0.1:8080\n";

    /// `LISTEN` (two lines) followed by `rest`, so `rest`'s line 1 is the file's line 3.
    fn with_listen(rest: &str) -> String {
        format!("{LISTEN}{rest}")
    }

    /// A directory under the system temp dir, removed on drop; no tempfile crate needed.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wsgate-config-test-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        /// A self-signed certificate for localhost in `<stem>.crt`, its key in `<stem>.key`;
        /// returns the certificate's PEM.
        fn pair(&self, stem: &str) -> String {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            self.file(&format!("{stem}.key"), made.key_pair.serialize_pem());
            let pem = made.cert.pem();
            self.file(&format!("{stem}.crt"), &pem);
            pem
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn embedded_default() {
        let c = load_str(
            super::super::EMBEDDED_DEFAULT,
            "<embedded default>",
            Path::new(""),
        )
        .unwrap();
        assert_eq!(c.source, "<embedded default>");
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.listen[0].address, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.listen[0].tls, None);
        assert_eq!(c.health_path, "/healthz");
        assert_eq!(c.sample_page.as_deref(), Some("/"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert!(c.websockets_enabled);
        assert_eq!(c.websockets, WsOptions::default());
        assert_eq!(c.http, HttpOptions::default());
        assert_eq!(c.log, LogOptions::default());
        assert_eq!(c.routes.len(), 1);
        let r = &c.routes[0];
        assert_eq!(
            (r.path.as_str(), r.websocket, r.line),
            ("/ws", WsMode::Echo, 16)
        );
        assert!(r.upstreams.is_empty());
        assert_eq!(r.ws, WsOptions::default());
    }

    #[test]
    fn minimal_file_gets_every_default() {
        let c = load(LISTEN).unwrap();
        assert_eq!(c.health_path, "/healthz");
        assert_eq!(c.sample_page, None);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.http, HttpOptions::default());
        assert_eq!(c.websockets, WsOptions::default());
        assert!(c.websockets_enabled);
        assert!(c.routes.is_empty());
        assert_eq!(c.log, LogOptions::default());
    }

    #[test]
    fn full_file_with_every_key() {
        let dir = TempDir::new();
        let pem = dir.pair("site");
        std::fs::rename(dir.0.join("site.crt"), dir.0.join("cert.pem")).unwrap();
        std::fs::rename(dir.0.join("site.key"), dir.0.join("key.pem")).unwrap();
        dir.file("ca.pem", pem);
        let path = dir.file(
            "wsgate.yaml",
            r#"
listen:
  - address: 0.0.0.0:80
  - address: "[::1]:8443"
    tls:
      certificates:
        - cert: cert.pem
          key: key.pem
health_path: /health
sample_page: /test
shutdown_grace: 5s
log_level: wsgate=debug
log_format: json
http:
  header_read_timeout: 3s
  tls_handshake_timeout: 4s
  max_header_size: 32KiB
  keep_alive: false
websockets:
  enabled: true
  keep_alive_interval: 1m
  keep_alive_timeout: 10s
  close_timeout: 2s
  receive_buffer_size: 8KiB
  max_message_size: 2MiB
  allowed_origins:
    - https://app.example.com
  require_origin: true
routes:
  - path: /chat
    host: Chat.Example.com
    websocket: relay
    upstreams:
      - ws://10.0.0.1:9000
      - wss://backend.internal/socket/
    balance: least_connections
    health_check:
      path: /ready
      interval: 10s
      timeout: 1s
      unhealthy_after: 5
      healthy_after: 1
    subprotocols: [chat.v2, json]
    upstream_timeout: 15s
    response_idle_timeout: 0
    ca: ca.pem
    keep_alive_interval: 0
    keep_alive_timeout: 0
    close_timeout: 500ms
    receive_buffer_size: 1024
    max_message_size: 64KiB
    allowed_origins: ["https://*.example.com:8443"]
    require_origin: false
"#,
        );
        let c = load_file(&path).unwrap();
        assert_eq!(c.source, path.display().to_string());
        assert_eq!(
            c.listen[0],
            Listener {
                address: "0.0.0.0:80".parse().unwrap(),
                tls: None,
                proxy_protocol: false,
                line: 3,
                column: 14,
            }
        );
        assert_eq!(c.listen[1].address, "[::1]:8443".parse().unwrap());
        let tls = c.listen[1].tls.as_ref().unwrap();
        assert_eq!(
            tls.certificates,
            vec![CertificatePair {
                cert: dir.0.join("cert.pem"),
                key: dir.0.join("key.pem")
            }]
        );
        assert_eq!(c.health_path, "/health");
        assert_eq!(c.sample_page.as_deref(), Some("/test"));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert_eq!(
            c.log,
            LogOptions {
                level: "wsgate=debug".into(),
                format: LogFormat::Json
            }
        );
        assert_eq!(
            c.http,
            HttpOptions {
                header_read_timeout: Duration::from_secs(3),
                tls_handshake_timeout: Duration::from_secs(4),
                max_header_size: 32 * 1024,
                keep_alive: false,
            }
        );
        assert!(c.websockets_enabled);
        let app = OriginPattern {
            scheme: "https".into(),
            host: "app.example.com".into(),
            port: 443,
            wildcard: false,
        };
        assert_eq!(
            c.websockets,
            WsOptions {
                keep_alive_interval: Duration::from_secs(60),
                keep_alive_timeout: Duration::from_secs(10),
                receive_buffer_size: 8 * 1024,
                max_message_size: 2 * 1024 * 1024,
                allowed_origins: vec![app],
                require_origin: true,
                close_timeout: Duration::from_secs(2),
            }
        );
        let r = &c.routes[0];
        assert_eq!(r.line, 30);
        assert_eq!(r.path, "/chat");
        assert_eq!(
            r.host,
            Some(HostPattern {
                host: "chat.example.com".into(),
                wildcard: false
            })
        );
        assert_eq!(r.websocket, WsMode::Relay);
        assert_eq!(
            r.upstreams,
            vec![
                Upstream {
                    url: "ws://10.0.0.1:9000".into(),
                    tls: false,
                    host: "10.0.0.1".into(),
                    port: 9000,
                    base_path: String::new(),
                },
                Upstream {
                    url: "wss://backend.internal/socket/".into(),
                    tls: true,
                    host: "backend.internal".into(),
                    port: 443,
                    base_path: "/socket".into(),
                },
            ]
        );
        assert_eq!(r.balance, Balance::LeastConnections);
        assert_eq!(
            r.health_check,
            Some(HealthCheck {
                path: "/ready".into(),
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                unhealthy_after: 5,
                healthy_after: 1,
            })
        );
        assert_eq!(r.subprotocols, vec!["chat.v2", "json"]);
        assert_eq!(r.upstream_timeout, Duration::from_secs(15));
        assert_eq!(r.response_idle_timeout, None);
        assert_eq!(r.ca.as_deref(), Some(dir.0.join("ca.pem").as_path()));
        assert_eq!(
            r.ws,
            WsOptions {
                keep_alive_interval: Duration::ZERO,
                keep_alive_timeout: Duration::ZERO,
                receive_buffer_size: 1024,
                max_message_size: 64 * 1024,
                allowed_origins: vec![OriginPattern {
                    scheme: "https".into(),
                    host: "example.com".into(),
                    port: 8443,
                    wildcard: true,
                }],
                require_origin: false,
                close_timeout: Duration::from_millis(500),
            }
        );
    }

    #[test]
    fn keys_with_line_separators_are_escaped_in_the_message() {
        let e = err("\"\\P\": 1\n");
        let shown = e.to_string();
        assert!(!shown.contains(['\n', '\u{2029}']), "{shown:?}");
        assert!(shown.contains("\\u{2029}"), "{shown:?}");
    }

    #[test]
    fn error_display_is_one_line() {
        let e = err(&with_listen(
            "websockets:\n  keep_alive_interval: 2 minutes\n",
        ));
        assert_eq!(
            e.to_string(),
            r#"test.yaml:4:24: websockets.keep_alive_interval: invalid duration "2 minutes" (use a number with ms, s, m or h, e.g. 30s)"#
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err(&with_listen("health_path: /h\nhealth_pth: /x\n"));
        assert_err(&e, 4, 1, "health_pth", "unknown key");
        assert!(
            e.message.contains("listen, health_path, sample_page"),
            "{e}"
        );
    }

    #[test]
    fn unknown_route_key_beats_missing_required_key() {
        let e = err(&with_listen(
            "routes:\n  - path: /a\n  - pth: /b\n    websocket: echo\n",
        ));
        assert_err(&e, 5, 5, "routes[1].pth", "unknown key");
        // The route's own keys and the WebSocket overrides are both listed.
        assert!(e.message.contains("path, host, websocket"), "{e}");
        assert!(e.message.contains("max_message_size"), "{e}");
    }

    #[test]
    fn unknown_nested_key() {
        let e = err(&with_listen("http:\n  keepalive: true\n"));
        assert_err(
            &e,
            4,
            3,
            "http.keepalive",
            "allowed here: header_read_timeout",
        );
    }

    #[test]
    fn bad_durations() {
        let e = err(&with_listen("shutdown_grace: 30\n"));
        assert_err(&e, 3, 17, "shutdown_grace", "needs a unit");
        let e = err(&with_listen("http:\n  header_read_timeout: 0\n"));
        assert_err(&e, 4, 24, "http.header_read_timeout", "longer than 0");
        let e = err(&with_listen("shutdown_grace: true\n"));
        assert_err(
            &e,
            3,
            17,
            "shutdown_grace",
            "expected a duration such as 30s, found the boolean true",
        );
    }

    #[test]
    fn bad_sizes() {
        let e = err(&with_listen("websockets:\n  receive_buffer_size: 4KB\n"));
        assert_err(
            &e,
            4,
            24,
            "websockets.receive_buffer_size",
            "KiB, MiB or GiB",
        );
        let e = err(&with_listen("http:\n  max_header_size: 4KiB\n"));
        assert_err(&e, 4, 20, "http.max_header_size", "between 8KiB and 1MiB");
        let e = err(&with_listen("websockets:\n  max_message_size: 100\n"));
        assert_err(
            &e,
            4,
            21,
            "websockets.max_message_size",
            "between 125 and 1GiB",
        );
        let e = err(&with_listen("websockets:\n  max_message_size: 2GiB\n"));
        assert_err(&e, 4, 21, "websockets.max_message_size", "out of range");
        // A plain integer is bytes.
        let c = load(&with_listen("websockets:\n  receive_buffer_size: 65536\n")).unwrap();
        assert_eq!(c.websockets.receive_buffer_size, 65536);
    }

    #[test]
    fn missing_certificate_file_is_reported_at_its_key() {
        let dir = TempDir::new();
        dir.file("key.pem", "key");
        let path = dir.file(
            "gw.yaml",
            "listen:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - cert: missing.pem\n          key: key.pem\n",
        );
        let e = load_file(&path).unwrap_err();
        assert_eq!(e.file, path.display().to_string());
        let resolved = dir.0.join("missing.pem");
        assert_err(
            &e,
            5,
            17,
            "listen[0].tls.certificates[0].cert",
            &format!("certificate file not found: {}", resolved.display()),
        );
    }

    #[test]
    fn missing_key_file_and_directories_are_rejected() {
        let dir = TempDir::new();
        dir.file("cert.pem", "cert");
        let yaml = |key: &str| {
            format!("listen:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {{cert: cert.pem, key: {key}}}\n")
        };
        let e = load_str(&yaml("nope.pem"), "t", &dir.0).unwrap_err();
        assert_err(
            &e,
            5,
            33,
            "listen[0].tls.certificates[0].key",
            "private key file not found",
        );
        std::fs::create_dir_all(dir.0.join("sub")).unwrap();
        let e = load_str(&yaml("sub"), "t", &dir.0).unwrap_err();
        assert_err(&e, 5, 33, "listen[0].tls.certificates[0].key", "not a file");
        let e = err("listen:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates: []\n");
        assert_err(
            &e,
            4,
            21,
            "listen[0].tls.certificates",
            "at least one certificate",
        );
    }

    #[test]
    fn unreadable_file_names_the_file() {
        let dir = TempDir::new();
        let path = dir.0.join("absent.yaml");
        let e = load_file(&path).unwrap_err();
        assert_eq!(e.file, path.display().to_string());
        assert_eq!(e.key, "(file)");
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn echo_route_with_websockets_disabled() {
        let e = err(&with_listen(
            "websockets:\n  enabled: false\nroutes:\n  - path: /ws\n    websocket: echo\n",
        ));
        assert_err(
            &e,
            7,
            16,
            "routes[0].websocket",
            "websockets.enabled is false",
        );
        assert!(
            e.message.contains("cannot echo; use passthrough or reject"),
            "{e}"
        );
    }

    #[test]
    fn disabled_websockets_need_upstreams_or_reject() {
        let e = err(&with_listen(
            "websockets:\n  enabled: false\nroutes:\n  - path: /ws\n",
        ));
        assert_err(&e, 6, 5, "routes[0]", "websocket: reject");
        let c = load(&with_listen(
            "websockets:\n  enabled: false\nroutes:\n  - path: /ws\n    websocket: reject\n",
        ))
        .unwrap();
        assert_eq!(c.routes[0].websocket, WsMode::Reject);
        assert!(!c.websockets_enabled);
    }

    #[test]
    fn relay_and_passthrough_need_upstreams() {
        for mode in ["relay", "passthrough"] {
            let e = err(&with_listen(&format!(
                "routes:\n  - path: /ws\n    websocket: {mode}\n    upstreams: []\n"
            )));
            assert_err(&e, 4, 5, "routes[0]", "needs upstreams");
        }
    }

    #[test]
    fn passthrough_routes_take_no_subprotocols() {
        let route = "routes:\n  - path: /ws\n    upstreams: [http://app:8080]\n";
        let e = err(&with_listen(&format!(
            "{route}    websocket: passthrough\n    subprotocols: [chat.v1]\n"
        )));
        assert_err(
            &e,
            7,
            19,
            "routes[0].subprotocols",
            "passthrough leaves the WebSocket handshake to the app",
        );
        assert!(e.to_string().starts_with("test.yaml:7:19: "), "{e}");
        // Passthrough by default, when wsgate does no WebSocket processing.
        let e = err(&with_listen(&format!(
            "websockets:\n  enabled: false\n{route}    subprotocols: [chat.v1]\n"
        )));
        assert_err(&e, 8, 19, "routes[0].subprotocols", "passthrough");
        let c = load(&with_listen(&format!(
            "{route}    subprotocols: [chat.v1]\n"
        )))
        .unwrap();
        assert_eq!(c.routes[0].websocket, WsMode::Relay);
        assert_eq!(c.routes[0].subprotocols, ["chat.v1"]);
    }

    #[test]
    fn reject_routes_take_no_subprotocols() {
        for route in [
            "routes:\n  - path: /ws\n",
            "routes:\n  - path: /ws\n    upstreams: [http://app:8080]\n",
        ] {
            let e = err(&with_listen(&format!(
                "{route}    websocket: reject\n    subprotocols: [chat.v1]\n"
            )));
            let line = route.lines().count() + 4;
            assert_err(
                &e,
                line,
                19,
                "routes[0].subprotocols",
                "a reject route refuses every upgrade, so it never negotiates a subprotocol",
            );
            assert!(
                e.to_string().starts_with(&format!("test.yaml:{line}:19: ")),
                "{e}"
            );
        }
        // An empty list is as meaningless there as a full one.
        let e = err(&with_listen(
            "routes:\n  - path: /ws\n    websocket: reject\n    subprotocols: []\n",
        ));
        assert_err(&e, 6, 19, "routes[0].subprotocols", "reject route");
        // With wsgate's WebSocket processing off, reject is still wsgate's answer.
        let e = err(&with_listen(
            "websockets:\n  enabled: false\nroutes:\n  - path: /ws\n    websocket: reject\n    subprotocols: [chat.v1]\n",
        ));
        assert_err(&e, 8, 19, "routes[0].subprotocols", "reject route");
        let c = load(&with_listen(
            "routes:\n  - path: /ws\n    websocket: reject\n",
        ))
        .unwrap();
        assert_eq!(c.routes[0].websocket, WsMode::Reject);
    }

    #[test]
    fn mode_defaults() {
        let c = load(&with_listen(
            "routes:\n  - path: /echo\n  - path: /app\n    upstreams: [http://app:8080]\n  - path: /both\n    websocket: echo\n    upstreams: [http://app:8080]\n",
        ))
        .unwrap();
        let modes: Vec<WsMode> = c.routes.iter().map(|r| r.websocket).collect();
        assert_eq!(modes, [WsMode::Echo, WsMode::Relay, WsMode::Echo]);
        assert_eq!(c.routes[1].balance, Balance::RoundRobin);
        assert_eq!(c.routes[1].upstream_timeout, Duration::from_secs(30));
        assert_eq!(
            c.routes[1].response_idle_timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            c.routes.iter().map(|r| r.line).collect::<Vec<_>>(),
            [4, 5, 7]
        );

        let c = load(&with_listen(
            "websockets:\n  enabled: false\nroutes:\n  - path: /app\n    upstreams: [http://app:8080]\n",
        ))
        .unwrap();
        assert_eq!(c.routes[0].websocket, WsMode::Passthrough);
    }

    #[test]
    fn upstream_url_forms() {
        let u = upstream("ws://example.com").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (false, "example.com", 80, "")
        );
        let u = upstream("wss://[::1]:9000/base").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (true, "::1", 9000, "/base")
        );
        let u = upstream("HTTPS://API.Example.com/").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.base_path.as_str()),
            (true, "api.example.com", 443, "")
        );
        assert_eq!(u.url, "HTTPS://API.Example.com/");
        let u = upstream("http://127.0.0.1:3000/a/b//").unwrap();
        assert_eq!((u.port, u.base_path.as_str()), (3000, "/a/b"));

        for (bad, needle) in [
            ("ftp://example.com", "unsupported scheme \"ftp\""),
            ("example.com:80", "not a URL"),
            ("http://user:pw@example.com", "passwords"),
            ("http://example.com/?q=1", "query strings"),
            ("http://example.com#x", "fragments"),
            ("http://example.com:0", "invalid port"),
            ("http://example.com:99999", "invalid port"),
            ("http://example.com:", "invalid port"),
            ("http://:80", "missing host"),
            ("http://[::1", "missing ]"),
            ("http://[nope]:80", "invalid IPv6"),
            ("http://exa mple.com", "invalid host name"),
        ] {
            let e = upstream(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }

        let e = err(&with_listen(
            "routes:\n  - path: /a\n    upstreams:\n      - http://ok\n      - gopher://old\n",
        ));
        assert_err(&e, 7, 9, "routes[0].upstreams[1]", "unsupported scheme");
    }

    #[test]
    fn origin_patterns() {
        let o = origin_pattern("https://*.Example.com").unwrap();
        assert_eq!(
            o,
            OriginPattern {
                scheme: "https".into(),
                host: "example.com".into(),
                port: 443,
                wildcard: true
            }
        );
        let o = origin_pattern("http://localhost:3000/").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.wildcard),
            ("localhost", 3000, false)
        );
        assert_eq!(origin_pattern("http://example.com").unwrap().port, 80);
        assert_eq!(origin_pattern("wss://example.com").unwrap().port, 443);
        assert_eq!(origin_pattern("http://[::1]:8080").unwrap().host, "::1");
        // Canonical, as the Origin header's host is compared in that form.
        let o = origin_pattern("http://[0:0::1]:8080").unwrap();
        assert_eq!((o.host.as_str(), o.port), ("::1", 8080));
        assert_eq!(origin_pattern("https://[FE80::A]").unwrap().host, "fe80::a");

        for (bad, needle) in [
            ("*", "use an empty list to allow every origin"),
            ("example.com", "not a URL"),
            ("https://example.com/app", "without a path"),
            ("ftp://example.com", "unsupported scheme"),
            ("https://*", "invalid host name"),
            ("https://a.*.example.com", "invalid host name"),
        ] {
            let e = origin_pattern(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }

        let e = err(&with_listen("websockets:\n  allowed_origins: ['*']\n"));
        assert_err(&e, 4, 21, "websockets.allowed_origins[0]", "empty list");
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second() {
        let e = err(&with_listen("health_path: /a\nhealth_path: /b\n"));
        assert_err(
            &e,
            4,
            1,
            "health_path",
            "duplicate key (first set at line 3)",
        );
        let e = err(&with_listen(
            "routes:\n  - path: /a\n    host: x\n    path: /b\n",
        ));
        assert_err(&e, 6, 5, "routes[0].path", "duplicate key");
    }

    #[test]
    fn route_override_leaves_the_global_intact() {
        let c = load(&with_listen(
            "websockets:\n  max_message_size: 4MiB\n  require_origin: true\nroutes:\n  - path: /small\n    max_message_size: 1KiB\n  - path: /big\n",
        ))
        .unwrap();
        assert_eq!(c.websockets.max_message_size, 4 << 20);
        assert_eq!(c.routes[0].ws.max_message_size, 1024);
        assert_eq!(c.routes[1].ws.max_message_size, 4 << 20);
        // Keys not overridden come from the global section, not the built-in defaults.
        assert!(c.routes[0].ws.require_origin);
        assert_eq!(
            c.routes[0].ws.keep_alive_interval,
            WsOptions::default().keep_alive_interval
        );
    }

    #[test]
    fn null_means_default() {
        let c = load(&with_listen(
            "http:\nsample_page:\nwebsockets:\n  allowed_origins:\nroutes:\n  - path: /x\n    allowed_origins:\n    host: ~\n",
        ))
        .unwrap();
        assert_eq!(c.http, HttpOptions::default());
        assert_eq!(c.sample_page, None);
        assert!(c.websockets.allowed_origins.is_empty());
        assert_eq!(c.routes[0].host, None);
        // An explicit empty list on a route overrides a non-empty global list.
        let c = load(&with_listen(
            "websockets:\n  allowed_origins: [https://a.example]\nroutes:\n  - path: /x\n    allowed_origins: []\n  - path: /y\n",
        ))
        .unwrap();
        assert!(c.routes[0].ws.allowed_origins.is_empty());
        assert_eq!(c.routes[1].ws.allowed_origins.len(), 1);
    }

    #[test]
    fn missing_required_keys_point_at_the_mapping() {
        let e = err("health_path: /h\n");
        assert_err(&e, 1, 1, "listen", "missing required key");
        let e = err("listen:\n  - tls:\n");
        assert_err(&e, 2, 5, "listen[0].address", "missing required key");
        let e = err(&with_listen("routes:\n  - websocket: echo\n"));
        assert_err(&e, 4, 5, "routes[0].path", "missing required key");
        let e = err("listen:\n  - address:\n");
        assert_err(&e, 2, 5, "listen[0].address", "needs a value");
        let e = err("listen: []\n");
        assert_err(&e, 1, 9, "listen", "at least one listener");
    }

    #[test]
    fn listen_addresses() {
        let c = load("listen:\n  - address: localhost:5000\n  - address: '[::1]:5000'\n  - address: 127.0.0.1:0\n  - address: 127.0.0.1:0\n").unwrap();
        let addrs: Vec<String> = c.listen.iter().map(|l| l.address.to_string()).collect();
        assert_eq!(
            addrs,
            ["127.0.0.1:5000", "[::1]:5000", "127.0.0.1:0", "127.0.0.1:0"]
        );
        let spots: Vec<(usize, usize)> = c.listen.iter().map(|l| (l.line, l.column)).collect();
        assert_eq!(spots, [(2, 14), (3, 14), (4, 14), (5, 14)]);

        let e = err("listen:\n  - address: 127.0.0.1:5000\n  - address: localhost:5000\n");
        assert_err(
            &e,
            3,
            14,
            "listen[1].address",
            "listen address 127.0.0.1:5000 is already taken by the listen address at line 2",
        );
        let e = err("listen:\n  - address: 5000\n");
        assert_err(&e, 2, 14, "listen[0].address", "use ip:port");
        let e = err("listen:\n  - address: example.com:80\n");
        assert_err(&e, 2, 14, "listen[0].address", "invalid listen address");
    }

    #[test]
    fn duplicate_routes() {
        let e = err(&with_listen(
            "routes:\n  - path: /a\n  - path: /a\n    host: a.example\n  - path: /a\n",
        ));
        assert_err(
            &e,
            7,
            5,
            "routes[2]",
            "already routed by routes[0] (line 4)",
        );
        let e = err(&with_listen(
            "routes:\n  - path: /a\n    host: '*.Example.com'\n  - path: /a\n    host: '*.example.com'\n",
        ));
        assert_err(&e, 6, 5, "routes[1]", "on host *.example.com");
    }

    #[test]
    fn host_patterns() {
        assert_eq!(
            host_pattern("*.Example.COM").unwrap(),
            HostPattern {
                host: "example.com".into(),
                wildcard: true
            }
        );
        assert!(!host_pattern("api.example.com").unwrap().wildcard);
        assert!(host_pattern("example.com:8080")
            .unwrap_err()
            .contains("port"));
        assert!(host_pattern("https://example.com")
            .unwrap_err()
            .contains("scheme"));
        assert!(host_pattern("*").unwrap_err().contains("invalid host name"));
        assert!(host_pattern("a..b")
            .unwrap_err()
            .contains("invalid host name"));
        // IPv6 literals, bracketed or bare, kept in the canonical bracketed form.
        for v6 in ["[::1]", "::1", "[0:0::1]"] {
            assert_eq!(host_pattern(v6).unwrap().host, "[::1]", "{v6}");
        }
        assert!(host_pattern("[::1]:80").unwrap_err().contains("IPv6"));
        assert!(host_pattern("[nope]").unwrap_err().contains("IPv6"));
    }

    #[test]
    fn route_names_add_the_host_only_to_routes_that_have_one() {
        let c = load(&with_listen(
            "routes:\n  - path: /a%22pp\n  - path: /app\n    host: '*.Example.com'\n  - path: /app\n    host: '[0::1]'\n",
        ))
        .unwrap();
        let names: Vec<_> = c.routes.iter().map(|r| r.name().into_owned()).collect();
        assert_eq!(names, ["/a\"pp", "*.example.com/app", "[::1]/app"]);
    }

    #[test]
    fn health_checks() {
        let base = "routes:\n  - path: /a\n    upstreams: [http://app]\n    health_check:\n";
        let c = load(&with_listen(&format!("{base}      path: /up\n"))).unwrap();
        assert_eq!(
            c.routes[0].health_check,
            Some(HealthCheck {
                path: "/up".into(),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                unhealthy_after: 3,
                healthy_after: 2,
            })
        );
        let e = err(&with_listen(&format!(
            "{base}      path: /up\n      interval: 1s\n"
        )));
        assert_err(
            &e,
            8,
            17,
            "routes[0].health_check.interval",
            "must not be longer than interval (1s)",
        );
        let e = err(&with_listen(&format!(
            "{base}      path: /up\n      timeout: 6s\n"
        )));
        assert_err(&e, 8, 16, "routes[0].health_check.timeout", "timeout (6s)");
        let e = err(&with_listen(&format!(
            "{base}      path: /up\n      healthy_after: 0\n"
        )));
        assert_err(
            &e,
            8,
            22,
            "routes[0].health_check.healthy_after",
            "0 is out of range: must be between 1 and 4294967295",
        );
        let e = err(&with_listen(&format!(
            "{base}      path: /up\n      healthy_after: '2'\n"
        )));
        assert_err(
            &e,
            8,
            22,
            "routes[0].health_check.healthy_after",
            "found the string \"2\"",
        );
        let e = err(&with_listen(&format!("{base}      interval: 1s\n")));
        assert_err(
            &e,
            7,
            7,
            "routes[0].health_check.path",
            "missing required key",
        );
        let e = err(&with_listen(
            "routes:\n  - path: /a\n    health_check: {path: /up}\n",
        ));
        assert_err(&e, 5, 19, "routes[0].health_check", "needs upstreams");
    }

    #[test]
    fn a_log_filter_that_does_not_parse_is_refused_at_its_line() {
        let e = err(&with_listen("log_level: wsgate=loud\n"));
        assert_err(&e, 3, 12, "log_level", "invalid log filter \"wsgate=loud\"");
        let e = err(&with_listen("log_level: \"wsgate[conn\"\n"));
        assert_err(&e, 3, 12, "log_level", "invalid log filter");
        // tracing would take these for targets to log at every level, and log nothing else.
        let e = err(&with_listen("log_level: warning\n"));
        assert_err(&e, 3, 12, "log_level", "\"warning\" is not a level");
        let e = err(&with_listen(
            "log_level: \"info, wsgate[ws{mode=relay}]\"\n",
        ));
        assert_err(
            &e,
            3,
            12,
            "log_level",
            "\"wsgate[ws{mode=relay}]\" is not a level",
        );
        for good in [
            "debug",
            "WARN",
            "wsgate=debug,hyper=info",
            "warn,wsgate[ws{mode=relay}]=debug",
            "[ws]=debug",
            "info,wsgate=trace",
        ] {
            let yaml = with_listen(&format!("log_level: \"{good}\"\n"));
            assert_eq!(load(&yaml).expect(good).log.level, good);
        }
    }

    #[test]
    fn scalar_types_are_strict() {
        let e = err(&with_listen("http:\n  keep_alive: \"true\"\n"));
        assert_err(
            &e,
            4,
            15,
            "http.keep_alive",
            "expected true or false, found the string \"true\"",
        );
        let e = err(&with_listen("http:\n  keep_alive: yes\n"));
        assert_err(&e, 4, 15, "http.keep_alive", "expected true or false");
        let e = err(&with_listen("log_level: false\n"));
        assert_err(
            &e,
            3,
            12,
            "log_level",
            "expected a string, found the boolean false",
        );
        let e = err(&with_listen("routes: {path: /a}\n"));
        assert_err(&e, 3, 9, "routes", "expected a list, found a mapping");
        let e = err(&with_listen("log_format: xml\n"));
        assert_err(&e, 3, 13, "log_format", "expected one of: text, json");
        let e = err(&with_listen("routes:\n  - path: /a\n    balance: random\n"));
        assert_err(
            &e,
            5,
            14,
            "routes[0].balance",
            "round_robin, least_connections, ip_hash, cookie",
        );
    }

    #[test]
    fn paths_and_subprotocols() {
        let e = err(&with_listen("health_path: healthz\n"));
        assert_err(&e, 3, 14, "health_path", "must start with /");
        let e = err(&with_listen("routes:\n  - path: /a?b\n"));
        assert_err(&e, 4, 11, "routes[0].path", "query strings");
        let e = err(&with_listen(
            "routes:\n  - path: /a\n    subprotocols: [ok, 'not ok']\n",
        ));
        assert_err(&e, 5, 24, "routes[0].subprotocols[1]", "HTTP token");
    }

    #[test]
    fn document_level_errors() {
        for empty in ["", "# just a comment\n", "---\n", "~\n"] {
            let e = err(empty);
            assert_err(&e, 1, 1, "(root)", "empty configuration");
        }
        let e = err("- a\n- b\n");
        assert_err(&e, 1, 1, "(root)", "expected a mapping, found a list");
        let e = err(&format!("{LISTEN}---\n{LISTEN}"));
        assert_err(&e, 3, 1, "(syntax)", "more than one YAML document");
        let e = err(&with_listen(
            "http: &h {keep_alive: true}\nwebsockets: *h\n",
        ));
        assert_err(&e, 4, 13, "websockets", "aliases");
        let e = err(&with_listen("log_level: !!str info\n"));
        assert_err(&e, 3, 18, "log_level", "tags");
    }

    #[test]
    fn syntax_errors_use_the_scanner_position() {
        let e = err("listen: [\nhealth_path: /x\n");
        assert_eq!(e.key, "listen[0]");
        assert_eq!(e.line, 2);
        let e = err("a: \"unterminated\n");
        assert_eq!((e.line, e.key.as_str()), (1, "a"));
        assert!(e.message.contains("quoted scalar"), "{e}");
        let e = err("listen:\n  - address: x\n   bad: 1\n");
        assert_eq!((e.line, e.column, e.key.as_str()), (3, 7, "listen[1]"));
        let e = err("a: b: c\n");
        assert_eq!(
            e.to_string(),
            "test.yaml:1:5: (syntax): mapping values are not allowed in this context"
        );
    }

    #[test]
    fn durations_beyond_a_year_are_refused_at_their_key() {
        for (yaml, column, key) in [
            (
                "http: { header_read_timeout: 9223372036854775807s }\n",
                30,
                "http.header_read_timeout",
            ),
            (
                "max_connection_age: 18446744073709551615s\n",
                21,
                "max_connection_age",
            ),
            (
                "websockets: { keep_alive_interval: 18446744073709551615s }\n",
                36,
                "websockets.keep_alive_interval",
            ),
            (
                "shutdown_grace: 9223372036854775807s\n",
                17,
                "shutdown_grace",
            ),
            ("close_spread: 8761h\n", 15, "close_spread"),
        ] {
            let e = err(&with_listen(yaml));
            assert_err(&e, 3, column, key, "is too large (at most 8760h)");
        }
        let e = err(&with_listen(
            "routes:\n  - path: /a\n    close_timeout: 31536001s\n",
        ));
        assert_err(&e, 5, 20, "routes[0].close_timeout", "at most 8760h");
        let c = load(&with_listen("max_connection_age: 8760h\n")).unwrap();
        assert_eq!(c.max_connection_age, Duration::from_secs(8760 * 3600));
    }

    #[test]
    fn certificate_material_is_checked_at_its_key() {
        let dir = TempDir::new();
        dir.pair("a");
        dir.pair("b");
        let yaml = |cert: &str, key: &str| {
            format!("listen:\n  - address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - cert: {cert}\n          key: {key}\n")
        };
        let load_in = |cert: &str, key: &str| load_str(&yaml(cert, key), "t", &dir.0);
        assert!(load_in("a.crt", "a.key").is_ok());
        let cert_key = "listen[0].tls.certificates[0].cert";
        let key_key = "listen[0].tls.certificates[0].key";

        let e = load_in("a.crt", "b.key").unwrap_err();
        let fit = format!(
            "key does not fit the certificate {}",
            dir.0.join("a.crt").display()
        );
        assert_err(&e, 6, 16, key_key, &fit);
        let e = load_in("a.crt", "a.crt").unwrap_err();
        assert_err(&e, 6, 16, key_key, "cannot read private key");

        dir.file("empty.crt", "");
        dir.file("junk.crt", "not a certificate\n");
        dir.file(
            "bad-pem.crt",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        dir.file(
            "not-x509.crt",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        for (cert, needle) in [
            ("empty.crt", "no CERTIFICATE block"),
            ("junk.crt", "no CERTIFICATE block"),
            ("a.key", "no CERTIFICATE block"),
            ("bad-pem.crt", "bad PEM certificate"),
            ("not-x509.crt", "not a valid X.509 certificate"),
        ] {
            let e = load_in(cert, "a.key").unwrap_err();
            assert_err(&e, 5, 17, cert_key, needle);
        }
    }

    #[test]
    fn a_ca_file_must_hold_usable_certificates() {
        let dir = TempDir::new();
        dir.pair("ca");
        let load_ca = |ca: &str| {
            let yaml = format!(
                "{LISTEN}routes:\n  - path: /a\n    upstreams: [https://app]\n    ca: {ca}\n"
            );
            load_str(&yaml, "t", &dir.0)
        };
        let c = load_ca("ca.crt").unwrap();
        assert_eq!(c.routes[0].ca, Some(dir.0.join("ca.crt")));

        dir.file("empty.pem", "");
        dir.file(
            "bad-pem.pem",
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        );
        dir.file(
            "not-x509.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        for (ca, needle) in [
            ("empty.pem", "no CERTIFICATE block"),
            ("ca.key", "no CERTIFICATE block"),
            ("bad-pem.pem", "bad PEM certificate"),
            ("not-x509.pem", "unusable CA certificate"),
            ("missing.pem", "CA file not found"),
        ] {
            let e = load_ca(ca).unwrap_err();
            assert_err(&e, 6, 9, "routes[0].ca", needle);
        }
    }

    #[test]
    fn overlapping_listen_addresses() {
        for (first, second, needle) in [
            (
                "0.0.0.0:8080",
                "127.0.0.1:8080",
                "127.0.0.1:8080 overlaps listen address 0.0.0.0:8080 at line 2 (a wildcard address",
            ),
            (
                "127.0.0.1:8080",
                "0.0.0.0:8080",
                "0.0.0.0:8080 overlaps listen address 127.0.0.1:8080 at line 2",
            ),
            (
                "0.0.0.0:8080",
                "'[::]:8080'",
                "[::]:8080 overlaps listen address 0.0.0.0:8080 at line 2 ([::] also takes the port on IPv4)",
            ),
            (
                "'[::]:8080'",
                "10.0.0.1:8080",
                "10.0.0.1:8080 overlaps listen address [::]:8080 at line 2 ([::] also",
            ),
            ("'[::1]:8080'", "'[::]:8080'", "overlaps listen address [::1]:8080"),
            (
                "127.0.0.1:8080",
                "'[::ffff:127.0.0.1]:8080'",
                "both are the same address",
            ),
        ] {
            let e = err(&format!(
                "listen:\n  - address: {first}\n  - address: {second}\n"
            ));
            assert_err(&e, 3, 14, "listen[1].address", needle);
        }
        // Other ports, port 0, and a specific IPv6 address beside IPv4's wildcard all bind.
        let c = load(
            "listen:\n  - address: 0.0.0.0:8080\n  - address: '[::1]:8080'\n  - address: 0.0.0.0:8081\n  - address: 0.0.0.0:0\n  - address: 127.0.0.1:0\n  - address: '[::]:0'\n",
        )
        .unwrap();
        assert_eq!(c.listen.len(), 6);
    }

    #[test]
    fn the_admin_address_must_not_overlap_a_listener() {
        let e = err(&with_listen("admin:\n  address: 127.0.0.1:8080\n"));
        assert_err(
            &e,
            4,
            12,
            "admin.address",
            "admin address 127.0.0.1:8080 is already taken by the listen address at line 2",
        );
        let e = err("listen:\n  - address: '[::]:9090'\nadmin:\n  address: localhost:9090\n");
        assert_err(
            &e,
            4,
            12,
            "admin.address",
            "overlaps listen address [::]:9090 at line 2 ([::] also takes the port on IPv4)",
        );
        let c = load(&with_listen("admin:\n  address: 127.0.0.1:9090\n")).unwrap();
        assert_eq!(
            c.admin,
            Some(Admin {
                address: "127.0.0.1:9090".parse().unwrap(),
                line: 4,
                column: 12,
            })
        );
        let c =
            load("listen:\n  - address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n").unwrap();
        assert_eq!(
            c.admin.map(|a| a.address),
            Some("127.0.0.1:0".parse().unwrap())
        );
    }

    #[test]
    fn the_sample_page_may_not_hide_a_route_or_the_health_path() {
        let e = err(&with_listen(
            "sample_page: /ws\nroutes:\n  - path: /ws\n    websocket: echo\n",
        ));
        assert_err(
            &e,
            3,
            14,
            "sample_page",
            "is also the path of the route at line 5",
        );
        let e = err(&with_listen("sample_page: /healthz\n"));
        assert_err(&e, 3, 14, "sample_page", "is also the health_path");
    }

    #[test]
    fn the_health_path_may_not_hide_a_route() {
        let e = err(&with_listen(
            "health_path: /ws\nroutes:\n  - path: /ws\n    websocket: echo\n",
        ));
        assert_err(
            &e,
            3,
            14,
            "health_path",
            "is also the path of the route at line 5",
        );
        // The same route spelled otherwise still clashes.
        let e = err(&with_listen(
            "health_path: //w%73\nroutes:\n  - path: /ws\n",
        ));
        assert_err(&e, 3, 14, "health_path", "route at line 5");
        // The default health_path has no key to point at: the route's path is, naming both.
        let e = err(&with_listen("routes:\n  - path: /a\n  - path: /healthz\n"));
        assert_err(
            &e,
            5,
            11,
            "routes[1].path",
            "health_path (by default /healthz) is also this route's path",
        );
        // Under a route, or beside it, health hides nothing the route would serve otherwise.
        load(&with_listen(
            "health_path: /ws/health\nroutes:\n  - path: /ws\n  - path: /\n",
        ))
        .unwrap();
    }

    #[test]
    fn route_paths_are_read_as_requests_are_routed() {
        let c = load(&with_listen(
            "routes:\n  - path: /%61dmin//x/\n  - path: /caf%C3%A9\n",
        ))
        .unwrap();
        let paths: Vec<&str> = c.routes.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/admin/x/", "/café"]);
        let e = err(&with_listen(
            "routes:\n  - path: /caf%C3%A9\n  - path: /café\n",
        ));
        assert_err(
            &e,
            5,
            5,
            "routes[1]",
            "already routed by routes[0] (line 4)",
        );
        for (path, why) in [
            ("/a/%zz", "malformed percent-encoding"),
            ("/a%", "malformed percent-encoding"),
            ("/a%00", "encoded NUL"),
            ("/a/../b", "dot segments"),
            ("/a/%2E", "dot segments"),
        ] {
            let e = err(&with_listen(&format!("routes:\n  - path: {path}\n")));
            assert_err(&e, 4, 11, "routes[0].path", why);
        }
    }

    #[test]
    fn close_spread_must_end_within_shutdown_grace() {
        let e = err(&with_listen("shutdown_grace: 3s\nclose_spread: 20s\n"));
        assert_err(
            &e,
            4,
            15,
            "close_spread",
            "must end before shutdown_grace (3s)",
        );
        let e = err(&with_listen(
            "shutdown_grace: 10s\ndrain_delay: 5s\nclose_spread: 5s\n",
        ));
        assert_err(&e, 5, 15, "close_spread", "counted after drain_delay (5s)");
        let ok = load(&with_listen(
            "shutdown_grace: 10s\ndrain_delay: 5s\nclose_spread: 4s\n",
        ))
        .unwrap();
        assert_eq!(ok.close_spread, Duration::from_secs(4));
    }

    #[test]
    fn drain_delay_must_be_shorter_than_shutdown_grace() {
        let e = err(&with_listen("drain_delay: 30s\n"));
        assert_err(
            &e,
            3,
            14,
            "drain_delay",
            "drain_delay (30s) must be shorter than shutdown_grace (30s), which counts it",
        );
        let e = err(&with_listen("drain_delay: 1m\nshutdown_grace: 10s\n"));
        assert_err(
            &e,
            3,
            14,
            "drain_delay",
            "(1m) must be shorter than shutdown_grace (10s)",
        );
        let c = load(&with_listen("shutdown_grace: 10s\ndrain_delay: 9s\n")).unwrap();
        assert_eq!(c.drain_delay, Duration::from_secs(9));
        let c = load(&with_listen("shutdown_grace: 0\ndrain_delay: 0\n")).unwrap();
        assert_eq!(
            (c.shutdown_grace, c.drain_delay),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let c = load(&format!("\u{feff}{LISTEN}")).unwrap();
        assert_eq!(c.listen[0].line, 2);
        let e = err("\u{feff}listn: []\n");
        assert_err(&e, 1, 1, "listn", "unknown key");
        let dir = TempDir::new();
        let path = dir.file("bom.yaml", format!("\u{feff}{LISTEN}"));
        assert_eq!(load_file(&path).unwrap().listen.len(), 1);
    }

    #[test]
    fn invalid_utf8_is_reported_at_the_first_bad_byte() {
        let dir = TempDir::new();
        let path = dir.file(
            "latin1.yaml",
            b"listen:\n  - address: 127.0.0.1:8080\nhealth_path: /caf\xe9\n",
        );
        let e = load_file(&path).unwrap_err();
        assert_eq!(e.file, path.display().to_string());
        assert_err(&e, 3, 18, "(file)", "invalid UTF-8 (byte 0xe9)");
        // Columns count characters, as the scanner's do, and a BOM is not one.
        let mut bytes = "\u{feff}# \u{e9}\u{e9} ".as_bytes().to_vec();
        bytes.push(0xff);
        let path = dir.file("mixed.yaml", bytes);
        assert_err(&load_file(&path).unwrap_err(), 1, 6, "(file)", "byte 0xff");
        let path = dir.file("utf16.yaml", b"\xff\xfel\x00i\x00");
        assert_err(&load_file(&path).unwrap_err(), 1, 1, "(file)", "UTF-16");
    }

    #[test]
    fn messages_fit_what_was_expected() {
        let e = err(&with_listen("limits: { max_connections: 5000000000 }\n"));
        assert_err(
            &e,
            3,
            28,
            "limits.max_connections",
            "5000000000 is out of range: must be between 0 (no limit) and 4294967295",
        );
        let e = err(&with_listen("limits:\n  message_rate: fast\n"));
        assert_err(
            &e,
            4,
            17,
            "limits.message_rate",
            "expected a whole number from 0 (no limit) to 4294967295, found the string \"fast\"",
        );
        // Quoting a boolean is the fix only where text is expected.
        for (yaml, column, key, expected) in [
            ("websockets: true\n", 13, "websockets", "a mapping"),
            ("routes: false\n", 9, "routes", "a list"),
            (
                "limits: { message_rate: true }\n",
                25,
                "limits.message_rate",
                "a whole number",
            ),
        ] {
            let e = err(&with_listen(yaml));
            assert_err(&e, 3, column, key, &format!("expected {expected}"));
            assert!(e.message.contains("found the boolean"), "{e}");
            assert!(!e.message.contains("quote"), "{e}");
        }
        let e = err(&with_listen("health_path: true\n"));
        assert_err(
            &e,
            3,
            14,
            "health_path",
            "found the boolean true (quote it if you mean text)",
        );
    }
}
