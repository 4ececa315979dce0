//! Scenarios: weighted flows of dependent HTTP steps, the TOML format users write them in, and
//! the built-in ones (which are written in that same format, so it is known to be enough).
//!
//! A scenario is a set of flows picked by weight per iteration; a flow is a list of steps run
//! in order on one connection, each able to use values captured from earlier responses
//! (`capture = { token = "body:/token", etag = "header:etag" }`) through `${name}` templates.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Values available to every template without capturing them.
pub const BUILTIN_VARS: [&str; 4] = ["run", "seq", "worker", "rand"];
/// Values of the seeded user an iteration runs as; using one makes the run seed users first.
pub const SEEDED_VARS: [&str; 5] = ["email", "password", "user_id", "token", "etag"];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Var(String),
}

/// A string with `${name}` holes, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                pieces.push(Piece::Literal(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').with_context(|| format!("unclosed `${{` in `{text}`"))?;
            let name = after[..end].trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                bail!("`${{{name}}}` in `{text}` is not a variable name");
            }
            pieces.push(Piece::Var(name.to_string()));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Literal(rest.to_string()));
        }
        Ok(Self { pieces })
    }

    pub fn literal(text: &str) -> Self {
        Self { pieces: vec![Piece::Literal(text.to_string())] }
    }

    pub fn is_static(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Literal(_)))
    }

    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Literal(_) => None,
        })
    }

    /// Appends the rendered text; names a missing variable in the error.
    pub fn render_into(&self, vars: &Vars<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => out.extend_from_slice(text.as_bytes()),
                Piece::Var(name) => vars.write(name, out)?,
            }
        }
        Ok(())
    }

    pub fn render(&self, vars: &Vars<'_>) -> Result<String, String> {
        let mut out = Vec::new();
        self.render_into(vars, &mut out)?;
        String::from_utf8(out).map_err(|_| "template rendered invalid UTF-8".to_string())
    }
}

/// A user created (with a session) during setup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeedUser {
    pub email: String,
    pub password: String,
    pub id: String,
    pub token: String,
    pub etag: String,
}

/// The values one iteration's templates can see.
#[derive(Debug)]
pub struct Vars<'a> {
    pub run: &'a str,
    pub seq: u64,
    pub worker: usize,
    pub rand: u64,
    pub user: Option<&'a SeedUser>,
    /// Captured so far in this iteration; later captures of a name win.
    pub captured: Vec<(String, String)>,
}

impl Vars<'_> {
    fn write(&self, name: &str, out: &mut Vec<u8>) -> Result<(), String> {
        if let Some((_, value)) = self.captured.iter().rev().find(|(n, _)| n == name) {
            out.extend_from_slice(value.as_bytes());
            return Ok(());
        }
        let mut number = String::new();
        let text: &str = match name {
            "run" => self.run,
            "seq" => {
                let _ = write!(number, "{}", self.seq);
                &number
            }
            "worker" => {
                let _ = write!(number, "{}", self.worker);
                &number
            }
            "rand" => {
                let _ = write!(number, "{:016x}", self.rand);
                &number
            }
            seeded => {
                let user = self.user.ok_or_else(|| format!("`${{{seeded}}}` needs a seeded user"))?;
                match seeded {
                    "email" => &user.email,
                    "password" => &user.password,
                    "user_id" => &user.id,
                    "token" => &user.token,
                    "etag" => &user.etag,
                    _ => return Err(format!("`${{{name}}}` was not captured")),
                }
            }
        };
        out.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureSource {
    /// A JSON pointer into the response body (RFC 6901), e.g. `/user/id`.
    Body(String),
    /// A response header, by lower-case name.
    Header(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    pub var: String,
    pub source: CaptureSource,
}

#[derive(Clone, Debug)]
pub struct Step {
    /// The endpoint label results are grouped under; steps of different flows may share one.
    pub name: String,
    /// Index of `name` in [`Scenario::endpoints`].
    pub endpoint: usize,
    pub method: String,
    pub path: Template,
    pub headers: Vec<(String, Template)>,
    pub body: Option<Template>,
    /// Statuses that count as success; empty means any 2xx or 3xx.
    pub expect: Vec<u16>,
    pub captures: Vec<Capture>,
}

impl Step {
    pub fn is_static(&self) -> bool {
        self.path.is_static()
            && self.headers.iter().all(|(_, v)| v.is_static())
            && self.body.as_ref().is_none_or(Template::is_static)
    }

    pub fn needs_body(&self) -> bool {
        self.captures.iter().any(|c| matches!(c.source, CaptureSource::Body(_)))
    }

    pub fn is_success(&self, status: u16) -> bool {
        if self.expect.is_empty() { (200..400).contains(&status) } else { self.expect.contains(&status) }
    }

    fn templates(&self) -> impl Iterator<Item = &Template> {
        std::iter::once(&self.path).chain(self.headers.iter().map(|(_, v)| v)).chain(self.body.iter())
    }
}

#[derive(Clone, Debug)]
pub struct Flow {
    pub name: String,
    pub weight: u32,
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub flows: Vec<Flow>,
    /// Distinct step names, in first-seen order: the rows of every per-endpoint table.
    pub endpoints: Vec<String>,
}

impl Scenario {
    /// Whether some flow that can be picked uses a seeded user's values.
    pub fn needs_users(&self) -> bool {
        self.flows.iter().filter(|f| f.weight > 0).any(flow_needs_users)
    }

    pub fn total_weight(&self) -> u64 {
        self.flows.iter().map(|f| u64::from(f.weight)).sum()
    }

    /// Picks a flow with probability proportional to its weight, from a uniform `roll`.
    pub fn pick(&self, roll: u64) -> &Flow {
        let total = self.total_weight().max(1);
        let mut r = roll % total;
        for flow in &self.flows {
            let w = u64::from(flow.weight);
            if r < w {
                return flow;
            }
            r -= w;
        }
        &self.flows[0]
    }

    /// Overrides flow weights: `mix` names the whole mix, flows it leaves out get weight 0.
    pub fn apply_mix(&mut self, mix: &[(String, u32)]) -> anyhow::Result<()> {
        for (name, _) in mix {
            if !self.flows.iter().any(|f| &f.name == name) {
                let known: Vec<&str> = self.flows.iter().map(|f| f.name.as_str()).collect();
                bail!("--mix names flow `{name}`, but scenario `{}` has only {}", self.name, known.join(", "));
            }
        }
        for flow in &mut self.flows {
            flow.weight = mix.iter().find(|(n, _)| n == &flow.name).map_or(0, |(_, w)| *w);
        }
        if self.total_weight() == 0 {
            bail!("--mix gives every flow weight 0");
        }
        Ok(())
    }
}

fn flow_needs_users(flow: &Flow) -> bool {
    let mut captured: Vec<&str> = Vec::new();
    for step in &flow.steps {
        for var in step.templates().flat_map(Template::vars) {
            if SEEDED_VARS.contains(&var) && !captured.contains(&var) {
                return true;
            }
        }
        captured.extend(step.captures.iter().map(|c| c.var.as_str()));
    }
    false
}

// ---- the TOML format ------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    flow: Vec<FlowFile>,
    /// Shorthand for a scenario of one flow.
    #[serde(default)]
    step: Vec<StepFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowFile {
    name: String,
    #[serde(default = "default_weight")]
    weight: u32,
    step: Vec<StepFile>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: String,
    #[serde(default = "default_method")]
    method: String,
    path: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    #[serde(default)]
    expect: Vec<u16>,
    #[serde(default)]
    capture: BTreeMap<String, String>,
}

fn default_method() -> String {
    "GET".to_string()
}

/// Parses a scenario from TOML text (the format of `bench/scenarios/*.toml`).
pub fn parse_toml(text: &str, default_name: &str) -> anyhow::Result<Scenario> {
    let file: ScenarioFile = toml::from_str(text).context("invalid scenario TOML")?;
    let name = file.name.unwrap_or_else(|| default_name.to_string());
    let mut flows_in = file.flow;
    if !file.step.is_empty() {
        flows_in.push(FlowFile { name: name.clone(), weight: 1, step: file.step });
    }
    if flows_in.is_empty() {
        bail!("scenario `{name}` has no steps: add [[step]] tables, or [[flow]] tables with [[flow.step]]");
    }
    let mut endpoints: Vec<String> = Vec::new();
    let mut flows = Vec::new();
    for f in flows_in {
        let mut steps = Vec::new();
        let mut captured: Vec<String> = Vec::new();
        for s in f.step {
            let step =
                compile_step(s, &mut endpoints).with_context(|| format!("scenario `{name}`, flow `{}`", f.name))?;
            for var in step.templates().flat_map(Template::vars) {
                let known =
                    BUILTIN_VARS.contains(&var) || SEEDED_VARS.contains(&var) || captured.iter().any(|c| c == var);
                if !known {
                    bail!(
                        "scenario `{name}`, flow `{}`, step `{}`: `${{{var}}}` is neither built in ({}), a seeded-user value ({}), nor captured by an earlier step",
                        f.name,
                        step.name,
                        BUILTIN_VARS.join(", "),
                        SEEDED_VARS.join(", ")
                    );
                }
            }
            captured.extend(step.captures.iter().map(|c| c.var.clone()));
            steps.push(step);
        }
        if steps.is_empty() {
            bail!("scenario `{name}`, flow `{}` has no steps", f.name);
        }
        flows.push(Flow { name: f.name, weight: f.weight, steps });
    }
    let scenario = Scenario { name, flows, endpoints };
    if scenario.total_weight() == 0 {
        bail!("scenario `{}`: every flow has weight 0", scenario.name);
    }
    Ok(scenario)
}

fn compile_step(s: StepFile, endpoints: &mut Vec<String>) -> anyhow::Result<Step> {
    let method = s.method.trim().to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        bail!("step `{}`: `{}` is not an HTTP method", s.name, s.method);
    }
    if !s.path.starts_with('/') && !s.path.starts_with("${") {
        bail!("step `{}`: path `{}` must start with /", s.name, s.path);
    }
    let mut headers = Vec::new();
    for (k, v) in s.headers {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            bail!("step `{}`: `{k}` is not a header name", s.name);
        }
        headers.push((k, Template::parse(&v)?));
    }
    let mut captures = Vec::new();
    for (var, from) in s.capture {
        let source = if let Some(pointer) = from.strip_prefix("body:") {
            if !(pointer.is_empty() || pointer.starts_with('/')) {
                bail!("step `{}`: capture `{var}`: a JSON pointer starts with / (got `{pointer}`)", s.name);
            }
            CaptureSource::Body(pointer.to_string())
        } else if let Some(header) = from.strip_prefix("header:") {
            CaptureSource::Header(header.trim().to_ascii_lowercase())
        } else {
            bail!("step `{}`: capture `{var}` = `{from}`: use \"body:/json/pointer\" or \"header:name\"", s.name);
        };
        captures.push(Capture { var, source });
    }
    let endpoint = match endpoints.iter().position(|e| e == &s.name) {
        Some(i) => i,
        None => {
            endpoints.push(s.name.clone());
            endpoints.len() - 1
        }
    };
    Ok(Step {
        endpoint,
        method,
        path: Template::parse(&s.path)?,
        headers,
        body: s.body.as_deref().map(Template::parse).transpose()?,
        expect: s.expect,
        captures,
        name: s.name,
    })
}

pub fn load_file(path: &Path) -> anyhow::Result<Scenario> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("custom");
    parse_toml(&text, stem).with_context(|| format!("in {}", path.display()))
}

// ---- built-in scenarios ---------------------------------------------------------------------

pub const BUILTIN_NAMES: [&str; 7] = ["session-check", "get-user", "login", "register", "mixed", "journey", "http"];

const SESSION_CHECK: &str = r#"
[[step]]
name = "session-check"
path = "/v1/sessions/current"
headers = { Authorization = "Bearer ${token}" }
expect = [200]
"#;

const GET_USER: &str = r#"
[[step]]
name = "get-user"
path = "/v1/users/${user_id}"
headers = { Authorization = "Bearer ${token}" }
expect = [200]
"#;

const LOGIN: &str = r#"
[[step]]
name = "login"
method = "POST"
path = "/v1/sessions"
body = '{"email":"${email}","password":"${password}"}'
expect = [201]
"#;

const REGISTER: &str = r#"
[[step]]
name = "register"
method = "POST"
path = "/v1/users"
body = '{"email":"reg-${run}-${seq}@bench.strata.test","name":"Bench ${seq}","password":"Bench-pass-${run}"}'
expect = [201]
"#;

/// Read-heavy, like production: most traffic re-checks sessions and reads profiles.
const MIXED: &str = r#"
[[flow]]
name = "session-check"
weight = 80
[[flow.step]]
name = "session-check"
path = "/v1/sessions/current"
headers = { Authorization = "Bearer ${token}" }
expect = [200]

[[flow]]
name = "get-user"
weight = 15
[[flow.step]]
name = "get-user"
path = "/v1/users/${user_id}"
headers = { Authorization = "Bearer ${token}" }
expect = [200]

[[flow]]
name = "login"
weight = 4
[[flow.step]]
name = "login"
method = "POST"
path = "/v1/sessions"
body = '{"email":"${email}","password":"${password}"}'
expect = [201]

[[flow]]
name = "register"
weight = 1
[[flow.step]]
name = "register"
method = "POST"
path = "/v1/users"
body = '{"email":"mix-${run}-${seq}@bench.strata.test","name":"Bench ${seq}","password":"Bench-pass-${run}"}'
expect = [201]
"#;

/// A whole user lifetime, each step feeding the next.
const JOURNEY: &str = r#"
[[step]]
name = "register"
method = "POST"
path = "/v1/users"
body = '{"email":"journey-${run}-${seq}@bench.strata.test","name":"Journey ${seq}","password":"Journey-pass-${run}"}'
expect = [201]
capture = { user_id = "body:/id", etag = "header:etag" }

[[step]]
name = "login"
method = "POST"
path = "/v1/sessions"
body = '{"email":"journey-${run}-${seq}@bench.strata.test","password":"Journey-pass-${run}"}'
expect = [201]
capture = { token = "body:/token" }

[[step]]
name = "who-am-i"
path = "/v1/sessions/current"
headers = { Authorization = "Bearer ${token}" }
expect = [200]

[[step]]
name = "update-user"
method = "PATCH"
path = "/v1/users/${user_id}"
headers = { Authorization = "Bearer ${token}", If-Match = "${etag}" }
body = '{"name":"Journey ${seq} renamed"}'
expect = [200]

[[step]]
name = "logout"
method = "DELETE"
path = "/v1/sessions/current"
headers = { Authorization = "Bearer ${token}" }
expect = [204]
"#;

/// What the `http` scenario is built from.
#[derive(Clone, Debug, Default)]
pub struct HttpRequestSpec {
    pub method: String,
    pub path: String,
    pub headers: Vec<String>,
    pub body: Option<String>,
}

/// Resolves `--scenario`: a built-in name, else a TOML file path.
pub fn resolve(name: &str, http: Option<&HttpRequestSpec>) -> anyhow::Result<Scenario> {
    let builtin = match name {
        "session-check" => Some(SESSION_CHECK),
        "get-user" => Some(GET_USER),
        "login" => Some(LOGIN),
        "register" => Some(REGISTER),
        "mixed" => Some(MIXED),
        "journey" => Some(JOURNEY),
        "http" => {
            let spec = http.context("the http scenario needs --path")?;
            return http_scenario(spec);
        }
        _ => None,
    };
    if let Some(text) = builtin {
        return parse_toml(text, name);
    }
    let path = Path::new(name);
    if path.exists() {
        return load_file(path);
    }
    bail!("unknown scenario `{name}`: use one of {} or the path of a TOML scenario file", BUILTIN_NAMES.join(", "))
}

fn http_scenario(spec: &HttpRequestSpec) -> anyhow::Result<Scenario> {
    if !spec.path.starts_with('/') {
        bail!("--path must start with / (got `{}`)", spec.path);
    }
    let mut headers = BTreeMap::new();
    for h in &spec.headers {
        let (k, v) = h.split_once(':').with_context(|| format!("--header `{h}`: expected 'Name: value'"))?;
        headers.insert(k.trim().to_string(), v.trim().to_string());
    }
    let file = StepFile {
        name: format!("{} {}", spec.method.to_ascii_uppercase(), spec.path),
        method: spec.method.clone(),
        path: spec.path.clone(),
        headers,
        body: spec.body.clone(),
        expect: Vec::new(),
        capture: BTreeMap::new(),
    };
    let mut endpoints = Vec::new();
    let step = compile_step(file, &mut endpoints)?;
    Ok(Scenario {
        name: "http".to_string(),
        flows: vec![Flow { name: "http".to_string(), weight: 1, steps: vec![step] }],
        endpoints,
    })
}

/// Pulls the captures of `step` out of a response.
pub fn extract_captures(
    step: &Step,
    body: &[u8],
    headers: &HashMap<String, String>,
    into: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let mut json: Option<serde_json::Value> = None;
    for capture in &step.captures {
        let value = match &capture.source {
            CaptureSource::Header(name) => headers
                .get(name)
                .cloned()
                .ok_or_else(|| format!("capture `{}`: no `{name}` header in the response", capture.var))?,
            CaptureSource::Body(pointer) => {
                if json.is_none() {
                    json = Some(
                        serde_json::from_slice(body)
                            .map_err(|e| format!("capture `{}`: body is not JSON: {e}", capture.var))?,
                    );
                }
                let found = json
                    .as_ref()
                    .and_then(|j| j.pointer(pointer))
                    .ok_or_else(|| format!("capture `{}`: nothing at `{pointer}` in the response body", capture.var))?;
                match found {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            }
        };
        into.push((capture.var.clone(), value));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(user: Option<&'a SeedUser>) -> Vars<'a> {
        Vars { run: "r1", seq: 42, worker: 3, rand: 0xab, user, captured: Vec::new() }
    }

    #[test]
    fn templates_render_builtins_seeded_and_captured_values() {
        let user = SeedUser { email: "a@b.c".into(), token: "tok".into(), ..SeedUser::default() };
        let mut v = vars(Some(&user));
        v.captured.push(("token".into(), "captured".into()));
        let t = Template::parse("/x/${run}/${seq}?w=${worker}&e=${email}&t=${token}").expect("valid");
        assert_eq!(t.render(&v).expect("renders"), "/x/r1/42?w=3&e=a@b.c&t=captured");
        assert!(Template::parse("${unclosed").is_err());
        assert!(Template::parse("${bad name}").is_err());
        assert!(Template::parse("plain $ sign").expect("valid").is_static());
    }

    #[test]
    fn missing_values_are_reported_by_name() {
        let v = vars(None);
        let err = Template::parse("${token}").expect("valid").render(&v).expect_err("no user");
        assert!(err.contains("token"), "{err}");
    }

    #[test]
    fn every_builtin_parses_and_knows_if_it_needs_users() {
        let http = HttpRequestSpec { method: "GET".into(), path: "/healthz".into(), ..Default::default() };
        let needs: Vec<(&str, bool)> = BUILTIN_NAMES
            .iter()
            .map(|n| (*n, resolve(n, Some(&http)).expect("builtin parses").needs_users()))
            .collect();
        assert_eq!(
            needs,
            vec![
                ("session-check", true),
                ("get-user", true),
                ("login", true),
                ("register", false),
                ("mixed", true),
                ("journey", false),
                ("http", false)
            ]
        );
        let journey = resolve("journey", None).expect("parses");
        assert_eq!(journey.endpoints, ["register", "login", "who-am-i", "update-user", "logout"]);
    }

    #[test]
    fn mix_overrides_weights_and_can_drop_the_need_for_users() {
        let mut mixed = resolve("mixed", None).expect("parses");
        mixed.apply_mix(&[("register".into(), 1)]).expect("valid mix");
        assert!(!mixed.needs_users());
        assert!(mixed.apply_mix(&[("nope".into(), 1)]).is_err());
        assert!(mixed.apply_mix(&[("login".into(), 0)]).is_err());
    }

    #[test]
    fn weighted_pick_follows_weights_exactly_over_a_full_cycle() {
        let mixed = resolve("mixed", None).expect("parses");
        let mut counts: HashMap<&str, u64> = HashMap::new();
        for roll in 0..mixed.total_weight() {
            *counts.entry(mixed.pick(roll).name.as_str()).or_default() += 1;
        }
        assert_eq!(counts["session-check"], 80);
        assert_eq!(counts["get-user"], 15);
        assert_eq!(counts["login"], 4);
        assert_eq!(counts["register"], 1);
    }

    #[test]
    fn toml_rejects_unknown_variables_and_bad_captures() {
        let err = parse_toml("[[step]]\nname='a'\npath='/x/${nope}'\n", "t").expect_err("unknown var");
        assert!(format!("{err:#}").contains("nope"), "{err:#}");
        let err = parse_toml("[[step]]\nname='a'\npath='/x'\ncapture={v='json:/x'}\n", "t").expect_err("bad capture");
        assert!(format!("{err:#}").contains("body:"), "{err:#}");
        assert!(parse_toml("name='empty'\n", "t").is_err());
        assert!(parse_toml("[[step]]\nname='a'\npath='/x'\nbogus=1\n", "t").is_err());
    }

    #[test]
    fn the_example_scenario_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/scenarios/profile-refresh.toml");
        let s = load_file(&path).expect("example parses");
        assert!(s.needs_users());
        assert!(s.flows.len() >= 2);
    }

    #[test]
    fn captures_from_body_and_headers() {
        let journey = resolve("journey", None).expect("parses");
        let register = &journey.flows[0].steps[0];
        let mut headers = HashMap::new();
        headers.insert("etag".to_string(), "\"1\"".to_string());
        let mut out = Vec::new();
        extract_captures(register, br#"{"id":"0190-abc","version":1}"#, &headers, &mut out).expect("captures");
        out.sort();
        assert_eq!(out, vec![("etag".into(), "\"1\"".into()), ("user_id".into(), "0190-abc".into())]);
        let err = extract_captures(register, b"{}", &headers, &mut Vec::new()).expect_err("no id");
        assert!(err.contains("/id"), "{err}");
    }
}
