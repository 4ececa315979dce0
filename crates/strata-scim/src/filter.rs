//! The SCIM filter grammar (RFC 7644 §3.4.2.2) parsed into an AST, and evaluated over JSON.
//!
//! ```text
//! FILTER    = attrExp / logExp / valuePath / *1"not" "(" FILTER ")"
//! valuePath = attrPath "[" valFilter "]"
//! attrExp   = (attrPath SP "pr") / (attrPath SP compareOp SP compValue)
//! logExp    = FILTER SP ("and" / "or") SP FILTER
//! compValue = false / null / true / number / string
//! attrPath  = [URI ":"] ATTRNAME *1subAttr
//! ```
//!
//! Precedence is `not` over `and` over `or` (§3.4.2.2: "and" binds tighter), and any
//! filter may be parenthesised. Operators and keywords are case-insensitive, as are
//! attribute names. Input is bounded ([`MAX_FILTER_LEN`], [`MAX_DEPTH`]) so that a hostile
//! filter costs at most a small, fixed amount of work.

use serde_json::Value;

/// Longer filters are refused: no real client sends more.
pub const MAX_FILTER_LEN: usize = 4096;
/// Deeper nesting (parentheses, `not`, value paths) is refused.
pub const MAX_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {position})")]
pub struct FilterError {
    pub message: String,
    /// Character offset into the filter where the problem was found.
    pub position: usize,
}

/// `[URI ":"] name [. sub]`. Names keep the case the client used; compare with
/// [`AttrPath::is`], which ignores case as the RFC requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URI, e.g. `urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`.
    pub uri: Option<String>,
    pub name: String,
    pub sub: Option<String>,
}

impl AttrPath {
    /// Whether this path is `name[.sub]` (case-insensitive), whatever its URI.
    pub fn is(&self, name: &str, sub: Option<&str>) -> bool {
        self.name.eq_ignore_ascii_case(name)
            && match (&self.sub, sub) {
                (None, None) => true,
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                _ => false,
            }
    }

    /// Parses a bare attribute path (no filter), as `sortBy` and `attributes` carry.
    pub fn parse(text: &str) -> Result<AttrPath, FilterError> {
        let text = text.trim();
        if text.is_empty() || !text.chars().all(is_path_char) {
            return Err(FilterError { message: format!("{text:?} is not an attribute path"), position: 0 });
        }
        split_path(text, 0)
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(uri) = &self.uri {
            write!(f, "{uri}:")?;
        }
        f.write_str(&self.name)?;
        if let Some(sub) = &self.sub {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<CompareOp> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum CompValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: CompValue,
    },
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `path[filter]`: some value of the multi-valued attribute `path` matches `filter`,
    /// whose paths are relative to that value (`emails[type eq "work"]`).
    ValuePath {
        path: AttrPath,
        filter: Box<Filter>,
    },
}

pub fn parse_filter(text: &str) -> Result<Filter, FilterError> {
    if text.chars().count() > MAX_FILTER_LEN {
        return Err(FilterError {
            message: format!("filters are limited to {MAX_FILTER_LEN} characters"),
            position: 0,
        });
    }
    let tokens = tokenize(text)?;
    let mut parser = Parser { tokens, at: 0, depth: 0, end: text.chars().count() };
    let filter = parser.or()?;
    match parser.peek() {
        None => Ok(filter),
        Some(t) => {
            Err(parser.error_at(t.position, format!("unexpected {} after a complete filter", t.kind.describe())))
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Word(String),
    Str(String),
    Number(serde_json::Number),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Open => "\"(\"".into(),
            Kind::Close => "\")\"".into(),
            Kind::OpenBracket => "\"[\"".into(),
            Kind::CloseBracket => "\"]\"".into(),
            Kind::Word(w) => format!("{w:?}"),
            Kind::Str(s) => format!("the string {s:?}"),
            Kind::Number(n) => format!("the number {n}"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    position: usize,
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$' | '.' | ':')
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | '[' | ']' => {
                let kind = match c {
                    '(' => Kind::Open,
                    ')' => Kind::Close,
                    '[' => Kind::OpenBracket,
                    _ => Kind::CloseBracket,
                };
                tokens.push(Token { kind, position: start });
                i += 1;
            }
            '"' => {
                // Up to the closing quote not preceded by an escaping backslash; the
                // literal is a JSON string, so JSON decodes its escapes.
                i += 1;
                let mut escaped = false;
                while i < chars.len() && (escaped || chars[i] != '"') {
                    escaped = !escaped && chars[i] == '\\';
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(FilterError { message: "unterminated string".into(), position: start });
                }
                i += 1;
                let literal: String = chars[start..i].iter().collect();
                let value: String = serde_json::from_str(&literal)
                    .map_err(|e| FilterError { message: format!("invalid string {literal}: {e}"), position: start })?;
                tokens.push(Token { kind: Kind::Str(value), position: start });
            }
            c if c == '-' || c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '-' | '+' | '.')) {
                    i += 1;
                }
                let literal: String = chars[start..i].iter().collect();
                let number = literal
                    .parse::<serde_json::Number>()
                    .map_err(|_| FilterError { message: format!("{literal:?} is not a number"), position: start })?;
                tokens.push(Token { kind: Kind::Number(number), position: start });
            }
            c if is_path_char(c) => {
                while i < chars.len() && is_path_char(chars[i]) {
                    i += 1;
                }
                tokens.push(Token { kind: Kind::Word(chars[start..i].iter().collect()), position: start });
            }
            other => {
                return Err(FilterError { message: format!("unexpected character {other:?}"), position: start });
            }
        }
    }
    Ok(tokens)
}

/// Splits `urn:…:User:name.sub`: the URI is everything before the last colon; `2.0`
/// inside URIs is why the dot is looked for only after it.
fn split_path(text: &str, position: usize) -> Result<AttrPath, FilterError> {
    let (uri, rest) = match text.rfind(':') {
        Some(at) => (Some(text[..at].to_owned()), &text[at + 1..]),
        None => (None, text),
    };
    let (name, sub) = match rest.split_once('.') {
        Some((name, sub)) => (name, Some(sub)),
        None => (rest, None),
    };
    let valid = |s: &str| {
        s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '$'))
    };
    if !valid(name) || sub.is_some_and(|s| !valid(s)) || uri.as_deref().is_some_and(str::is_empty) {
        return Err(FilterError { message: format!("{text:?} is not an attribute path"), position });
    }
    Ok(AttrPath { uri, name: name.to_owned(), sub: sub.map(str::to_owned) })
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn error_at(&self, position: usize, message: String) -> FilterError {
        FilterError { message, position }
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.position)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Kind::Word(w), .. }) if w.eq_ignore_ascii_case(word))
    }

    fn deeper(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(self.here(), format!("filters may nest at most {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            let right = self.and()?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            let right = self.unary()?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.keyword("not") {
            self.at += 1;
            self.deeper()?;
            if !matches!(self.peek(), Some(Token { kind: Kind::Open, .. })) {
                return Err(self.error_at(self.here(), "\"not\" must be followed by \"(\"".into()));
            }
            let inner = self.group()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if matches!(self.peek(), Some(Token { kind: Kind::Open, .. })) {
            return self.group();
        }
        self.attribute_expression()
    }

    fn group(&mut self) -> Result<Filter, FilterError> {
        self.at += 1; // "("
        self.deeper()?;
        let inner = self.or()?;
        match self.next() {
            Some(Token { kind: Kind::Close, .. }) => {}
            other => {
                let position = other.map_or(self.end, |t| t.position);
                return Err(self.error_at(position, "missing \")\"".into()));
            }
        }
        self.depth -= 1;
        Ok(inner)
    }

    fn attribute_expression(&mut self) -> Result<Filter, FilterError> {
        let (path, position) = match self.next() {
            Some(Token { kind: Kind::Word(w), position }) => (split_path(&w, position)?, position),
            Some(t) => {
                return Err(self.error_at(t.position, format!("expected an attribute, found {}", t.kind.describe())));
            }
            None => return Err(self.error_at(self.end, "expected an attribute, found the end of the filter".into())),
        };
        if matches!(self.peek(), Some(Token { kind: Kind::OpenBracket, .. })) {
            if path.sub.is_some() {
                return Err(
                    self.error_at(position, "a value filter applies to an attribute, not a sub-attribute".into())
                );
            }
            self.at += 1;
            self.deeper()?;
            let inner = self.or()?;
            match self.next() {
                Some(Token { kind: Kind::CloseBracket, .. }) => {}
                other => {
                    let position = other.map_or(self.end, |t| t.position);
                    return Err(self.error_at(position, "missing \"]\"".into()));
                }
            }
            self.depth -= 1;
            return Ok(Filter::ValuePath { path, filter: Box::new(inner) });
        }
        let (op_word, op_position) = match self.next() {
            Some(Token { kind: Kind::Word(w), position }) => (w, position),
            Some(t) => {
                return Err(self.error_at(t.position, format!("expected an operator, found {}", t.kind.describe())));
            }
            None => return Err(self.error_at(self.end, format!("expected an operator after {path}"))),
        };
        if op_word.eq_ignore_ascii_case("pr") {
            return Ok(Filter::Present(path));
        }
        let op = CompareOp::parse(&op_word)
            .ok_or_else(|| self.error_at(op_position, format!("{op_word:?} is not an operator")))?;
        let value = match self.next() {
            Some(Token { kind: Kind::Str(s), .. }) => CompValue::String(s),
            Some(Token { kind: Kind::Number(n), .. }) => CompValue::Number(n),
            Some(Token { kind: Kind::Word(w), position }) => match w.to_ascii_lowercase().as_str() {
                "true" => CompValue::Bool(true),
                "false" => CompValue::Bool(false),
                "null" => CompValue::Null,
                _ => return Err(self.error_at(position, format!("{w:?} is not a value; quote strings"))),
            },
            Some(t) => return Err(self.error_at(t.position, format!("expected a value, found {}", t.kind.describe()))),
            None => return Err(self.error_at(self.end, format!("expected a value after {op_word}"))),
        };
        Ok(Filter::Compare { path, op, value })
    }
}

/// The values `path` names in `resource` (attribute names case-insensitive), flattened
/// over multi-valued attributes.
fn lookup<'a>(resource: &'a Value, path: &AttrPath) -> Vec<&'a Value> {
    let field = |v: &'a Value, name: &str| -> Option<&'a Value> {
        v.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    };
    let scope = match &path.uri {
        // Extension attributes live under their schema URI.
        Some(uri) => match field(resource, uri) {
            Some(inner) => inner,
            None => resource,
        },
        None => resource,
    };
    let mut out = Vec::new();
    let top = match field(scope, &path.name) {
        Some(v) => v,
        None => return out,
    };
    let tops: Vec<&Value> = match top {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for v in tops {
        match &path.sub {
            Some(sub) => {
                if let Some(s) = field(v, sub) {
                    out.push(s);
                }
            }
            None => out.push(v),
        }
    }
    out
}

fn compare(actual: &Value, op: CompareOp, expected: &CompValue) -> bool {
    use std::cmp::Ordering;
    let ordering = match (actual, expected) {
        // Strings compare without regard to case (caseExact is false for every
        // attribute this server filters on in memory).
        (Value::String(a), CompValue::String(b)) => {
            let (a, b) = (a.to_lowercase(), b.to_lowercase());
            match op {
                CompareOp::Co => return a.contains(&b),
                CompareOp::Sw => return a.starts_with(&b),
                CompareOp::Ew => return a.ends_with(&b),
                _ => a.cmp(&b),
            }
        }
        (Value::Number(a), CompValue::Number(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => match a.partial_cmp(&b) {
                Some(o) => o,
                None => return false,
            },
            _ => return false,
        },
        (Value::Bool(a), CompValue::Bool(b)) => match op {
            CompareOp::Eq => return a == b,
            CompareOp::Ne => return a != b,
            _ => return false,
        },
        (Value::Null, CompValue::Null) => Ordering::Equal,
        _ => return op == CompareOp::Ne,
    };
    match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::Ne => ordering != Ordering::Equal,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::Ge => ordering != Ordering::Less,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::Le => ordering != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

/// The value `sortBy` orders `resource` by (RFC 7644 §3.4.2.3): the attribute's value or,
/// for a multi-valued attribute, its primary value, else its first.
pub fn sort_value<'a>(resource: &'a Value, path: &AttrPath) -> Option<&'a Value> {
    let parent = AttrPath { uri: path.uri.clone(), name: path.name.clone(), sub: None };
    let primary = lookup(resource, &parent).into_iter().find(|v| {
        v.as_object()
            .is_some_and(|o| o.iter().any(|(k, p)| k.eq_ignore_ascii_case("primary") && p == &Value::Bool(true)))
    });
    if let (Some(primary), Some(sub)) = (primary, &path.sub) {
        let found = primary.as_object().and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(sub)));
        if let Some((_, v)) = found {
            return Some(v);
        }
    }
    lookup(resource, path).into_iter().find(|v| !v.is_null())
}

/// The order of two `sortBy` values, ascending: strings without regard to case, numbers
/// by value, and missing values last (§3.4.2.3 sorts unassigned values after the others
/// in ascending order).
pub fn compare_sort_values(a: Option<&Value>, b: Option<&Value>) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(Value::String(a)), Some(Value::String(b))) => a.to_lowercase().cmp(&b.to_lowercase()),
        (Some(Value::Number(a)), Some(Value::Number(b))) => {
            a.as_f64().partial_cmp(&b.as_f64()).unwrap_or(Ordering::Equal)
        }
        (Some(Value::Bool(a)), Some(Value::Bool(b))) => a.cmp(b),
        // Values of different kinds: an order that is at least stable.
        (Some(a), Some(b)) => a.to_string().cmp(&b.to_string()),
    }
}

impl Filter {
    /// Whether `resource` (a SCIM resource or one value of a multi-valued attribute)
    /// matches. A multi-valued attribute matches when any of its values does.
    pub fn matches(&self, resource: &Value) -> bool {
        match self {
            Filter::Compare { path, op, value } => {
                let found = lookup(resource, path);
                if found.is_empty() {
                    // An absent attribute is null: `ne "x"` holds, everything else fails.
                    return *op == CompareOp::Ne && *value != CompValue::Null
                        || (*op == CompareOp::Eq && *value == CompValue::Null);
                }
                found.iter().any(|v| compare(v, *op, value))
            }
            Filter::Present(path) => lookup(resource, path).iter().any(|v| match v {
                Value::Null => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !o.is_empty(),
                _ => true,
            }),
            Filter::And(a, b) => a.matches(resource) && b.matches(resource),
            Filter::Or(a, b) => a.matches(resource) || b.matches(resource),
            Filter::Not(inner) => !inner.matches(resource),
            Filter::ValuePath { path, filter } => lookup(resource, path).iter().any(|v| filter.matches(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(name: &str) -> AttrPath {
        AttrPath::parse(name).unwrap()
    }

    fn s(v: &str) -> CompValue {
        CompValue::String(v.into())
    }

    #[test]
    fn parses_every_operator_and_value_kind() {
        for (text, op) in [
            ("eq", CompareOp::Eq),
            ("NE", CompareOp::Ne),
            ("co", CompareOp::Co),
            ("Sw", CompareOp::Sw),
            ("ew", CompareOp::Ew),
            ("gt", CompareOp::Gt),
            ("ge", CompareOp::Ge),
            ("lt", CompareOp::Lt),
            ("le", CompareOp::Le),
        ] {
            let f = parse_filter(&format!("userName {text} \"bjensen\"")).unwrap();
            assert_eq!(f, Filter::Compare { path: p("userName"), op, value: s("bjensen") });
        }
        assert_eq!(parse_filter("title pr").unwrap(), Filter::Present(p("title")));
        assert_eq!(
            parse_filter("active eq TRUE").unwrap(),
            Filter::Compare { path: p("active"), op: CompareOp::Eq, value: CompValue::Bool(true) }
        );
        assert_eq!(
            parse_filter("x eq null").unwrap(),
            Filter::Compare { path: p("x"), op: CompareOp::Eq, value: CompValue::Null }
        );
        let Filter::Compare { value: CompValue::Number(n), .. } = parse_filter("n ge -1.5e3").unwrap() else {
            panic!("a number")
        };
        assert_eq!(n.as_f64(), Some(-1500.0));
        // JSON escapes inside strings.
        assert_eq!(
            parse_filter(r#"displayName eq "a \"quoted\" \\ \u00e9""#).unwrap(),
            Filter::Compare { path: p("displayName"), op: CompareOp::Eq, value: s("a \"quoted\" \\ é") }
        );
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tightest() {
        let f = parse_filter(r#"a eq "1" or b eq "2" and not (c pr)"#).unwrap();
        let a = Filter::Compare { path: p("a"), op: CompareOp::Eq, value: s("1") };
        let b = Filter::Compare { path: p("b"), op: CompareOp::Eq, value: s("2") };
        let c = Filter::Not(Box::new(Filter::Present(p("c"))));
        assert_eq!(f, Filter::Or(Box::new(a.clone()), Box::new(Filter::And(Box::new(b.clone()), Box::new(c)))));
        let grouped = parse_filter(r#"(a eq "1" or b eq "2") and c pr"#).unwrap();
        assert_eq!(
            grouped,
            Filter::And(Box::new(Filter::Or(Box::new(a), Box::new(b))), Box::new(Filter::Present(p("c"))))
        );
    }

    #[test]
    fn value_paths_uris_and_sub_attributes() {
        let f = parse_filter(r#"emails[type eq "work" and value co "@example.com"] or ims[type eq "xmpp"]"#).unwrap();
        let Filter::Or(left, _) = f else { panic!("or") };
        let Filter::ValuePath { path, filter } = *left else { panic!("value path") };
        assert_eq!(path, p("emails"));
        assert!(matches!(*filter, Filter::And(..)));
        let uri = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
        let f = parse_filter(&format!("{uri}:employeeNumber eq \"42\"")).unwrap();
        let Filter::Compare { path, .. } = f else { panic!("compare") };
        assert_eq!(path.uri.as_deref(), Some(uri));
        assert_eq!(path.name, "employeeNumber");
        let f = parse_filter(r#"name.familyName co "O'Malley""#).unwrap();
        let Filter::Compare { path, .. } = f else { panic!("compare") };
        assert!(path.is("NAME", Some("familyname")));
        assert_eq!(path.to_string(), "name.familyName");
        assert_eq!(
            parse_filter("meta.lastModified gt \"2011-05-13T04:42:34Z\"").unwrap(),
            Filter::Compare { path: p("meta.lastModified"), op: CompareOp::Gt, value: s("2011-05-13T04:42:34Z") }
        );
    }

    #[test]
    fn bad_filters_are_errors_with_positions() {
        for bad in [
            "",
            "userName",
            "userName eq",
            "userName xx \"a\"",
            "userName eq bjensen",
            "userName eq \"unterminated",
            "(userName pr",
            "emails[type eq \"work\"",
            "not userName pr",
            "userName pr and",
            "userName pr userName pr",
            "a.b.c eq \"x\"",
            "1abc eq \"x\"",
            "emails.value[type eq \"x\"]",
            "userName eq \"a\" ; drop",
            ")",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad:?} parsed");
        }
        let e = parse_filter("userName xx \"a\"").unwrap_err();
        assert_eq!(e.position, 9);
        let deep = format!("{}a pr{}", "(".repeat(40), ")".repeat(40));
        assert!(parse_filter(&deep).unwrap_err().message.contains("nest"));
        assert!(parse_filter(&"a pr or ".repeat(1000)).is_err());
    }

    #[test]
    fn evaluates_over_json() {
        let user = json!({
            "userName": "Bjensen@Example.com",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "active": true,
            "emails": [{"value": "b@work.example", "type": "work"}, {"value": "b@home.example", "type": "home"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"employeeNumber": "701984"},
            "meta": {"lastModified": "2026-01-02T00:00:00Z"},
        });
        let yes = |f: &str| assert!(parse_filter(f).unwrap().matches(&user), "{f} should match");
        let no = |f: &str| assert!(!parse_filter(f).unwrap().matches(&user), "{f} should not match");
        yes(r#"userName eq "bjensen@example.com""#);
        yes(r#"USERNAME sw "bjen""#);
        yes(r#"name.familyName ew "sen""#);
        yes(r#"emails[type eq "work"]"#);
        yes(r#"emails[type eq "work" and value co "work"]"#);
        no(r#"emails[type eq "work" and value co "home"]"#);
        yes(r#"emails.value co "home""#);
        yes("active eq true and not (title pr)");
        no("title pr");
        yes(r#"title ne "x""#);
        yes(r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber eq "701984""#);
        yes(r#"meta.lastModified gt "2025-12-31T00:00:00Z""#);
        no(r#"meta.lastModified lt "2025-12-31T00:00:00Z""#);
        yes(r#"userName eq "nobody" or name.givenName eq "barbara""#);
    }

    #[test]
    fn sort_values_take_the_primary_and_put_missing_last() {
        use std::cmp::Ordering;
        let user = json!({
            "userName": "B",
            "emails": [{"value": "z@x", "type": "home"}, {"value": "a@x", "type": "work", "primary": true}],
        });
        assert_eq!(sort_value(&user, &p("emails.value")), Some(&json!("a@x")));
        assert_eq!(sort_value(&user, &p("userName")), Some(&json!("B")));
        assert_eq!(sort_value(&user, &p("title")), None);
        let (a, b) = (json!("a"), json!("B"));
        assert_eq!(compare_sort_values(Some(&a), Some(&b)), Ordering::Less);
        assert_eq!(compare_sort_values(None, Some(&a)), Ordering::Greater);
        assert_eq!(compare_sort_values(Some(&json!(2)), Some(&json!(10))), Ordering::Less);
    }
}
