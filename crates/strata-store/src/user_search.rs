//! [`UserSearch`] as SQL, once for the three backends: they differ only in how a parameter
//! is written (`?`, `?N`, `$N`) and typed, and in how a prefix range is collated.
//!
//! Every condition is written so that an index serves it: equalities on `email`, `id`,
//! `user_external_ids.external_id`, `user_enterprise.employee_number`; a prefix as the
//! range `[prefix, next)` over the email index (never `LIKE`, which SQLite only indexes
//! case-insensitively and PostgreSQL only with a constant pattern); `updated_at` ranges
//! over `users_updated_at`. The EXPLAIN tests hold each backend to that.

use strata_core::domain::{Timestamp, UserId};
use strata_core::ports::{Comparison, UserCondition, UserListQuery, UserOrder, UserPredicate, UserSearch};

/// A parameter, typed by the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
    Id(UserId),
}

#[derive(Clone, Copy)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

pub(crate) struct Built {
    pub sql: String,
    pub params: Vec<Param>,
}

struct Builder {
    dialect: Dialect,
    params: Vec<Param>,
}

impl Builder {
    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
            Dialect::Mysql => "?".to_owned(),
        }
    }

    /// The email column as a byte-ordered string: PostgreSQL databases may default to a
    /// linguistic collation, in which a prefix is not a range (migration 8 indexes this
    /// expression); SQLite's BINARY and MySQL's utf8mb4_bin already compare code points.
    fn email_bytes(&self) -> &'static str {
        match self.dialect {
            Dialect::Postgres => "(email COLLATE \"C\")",
            _ => "email",
        }
    }

    fn condition(&mut self, c: &UserCondition) -> String {
        match c {
            UserCondition::Id(id) => format!("id = {}", self.param(Param::Id(*id))),
            UserCondition::Email(e) => format!("email = {}", self.param(Param::Text(e.as_str().to_owned()))),
            UserCondition::EmailPrefix(prefix) => {
                let column = self.email_bytes();
                let low = self.param(Param::Text(prefix.clone()));
                match next_prefix(prefix) {
                    Some(high) => {
                        let high = self.param(Param::Text(high));
                        format!("({column} >= {low} AND {column} < {high})")
                    }
                    None => format!("{column} >= {low}"),
                }
            }
            UserCondition::ExternalId(e) => format!(
                "id IN (SELECT user_id FROM user_external_ids WHERE external_id = {})",
                self.param(Param::Text(e.as_str().to_owned()))
            ),
            UserCondition::EmployeeNumber(n) => format!(
                "id IN (SELECT user_id FROM user_enterprise WHERE employee_number = {})",
                self.param(Param::Text(n.as_str().to_owned()))
            ),
            UserCondition::UpdatedAt(op, Timestamp(t)) => {
                let op = match op {
                    Comparison::Greater => ">",
                    Comparison::GreaterOrEqual => ">=",
                    Comparison::Less => "<",
                    Comparison::LessOrEqual => "<=",
                };
                format!("updated_at {op} {}", self.param(Param::Int(*t)))
            }
        }
    }

    fn predicate(&mut self, p: &UserPredicate) -> String {
        let join = |b: &mut Builder, parts: &[UserPredicate], word: &str, empty: &str| {
            if parts.is_empty() {
                return empty.to_owned();
            }
            let inner: Vec<String> = parts.iter().map(|p| b.predicate(p)).collect();
            format!("({})", inner.join(word))
        };
        match p {
            UserPredicate::Is(c) => self.condition(c),
            UserPredicate::All(parts) => join(self, parts, " AND ", "1 = 1"),
            UserPredicate::Any(parts) => join(self, parts, " OR ", "1 = 0"),
        }
    }
}

/// The smallest string greater than every string starting with `prefix`: its last
/// character moved one code point up (skipping the surrogates, which `char` cannot hold).
/// `None` when no such string exists (a prefix of U+10FFFF only).
pub(crate) fn next_prefix(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut code = last as u32 + 1;
        if (0xD800..=0xDFFF).contains(&code) {
            code = 0xE000;
        }
        if let Some(next) = char::from_u32(code) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// `SELECT <columns> FROM users WHERE … ORDER BY … LIMIT … OFFSET …`.
pub(crate) fn select(dialect: Dialect, columns: &str, search: &UserSearch) -> Built {
    let mut b = Builder { dialect, params: Vec::new() };
    let filter = search.predicate.as_ref().map(|p| format!(" WHERE {}", b.predicate(p))).unwrap_or_default();
    let direction = if search.descending { "DESC" } else { "ASC" };
    let order = match search.order {
        // SQLite, knowing no statistics, would rather walk the whole primary key in id
        // order than sort the few rows an index finds; `+id` is not the key's order, so it
        // takes the index and sorts (the idiom SQLite documents for steering its planner).
        UserOrder::Id if search.predicate.is_some() && matches!(dialect, Dialect::Sqlite) => {
            format!("+id {direction}")
        }
        UserOrder::Id => format!("id {direction}"),
        UserOrder::Email => format!("email {direction}, id ASC"),
        UserOrder::Name => format!("name {direction}, id ASC"),
        UserOrder::CreatedAt => format!("created_at {direction}, id ASC"),
        UserOrder::UpdatedAt => format!("updated_at {direction}, id ASC"),
    };
    let limit = b.param(Param::Int(i64::from(search.limit)));
    let offset = b.param(Param::Int(i64::try_from(search.offset).unwrap_or(i64::MAX)));
    Built {
        sql: format!("SELECT {columns} FROM users{filter} ORDER BY {order} LIMIT {limit} OFFSET {offset}"),
        params: b.params,
    }
}

/// A page of `GET /v1/users` with the filters the fixed statements do not cover (email
/// prefix, status, role): `id > after` plus each filter given, in id order. A prefix is the
/// email index's range, its matches sorted by id; without one the primary key is walked in
/// order and status and role filter what it yields.
pub(crate) fn list_page(dialect: Dialect, columns: &str, query: &UserListQuery) -> Built {
    let mut b = Builder { dialect, params: Vec::new() };
    let after = query.after.unwrap_or_else(|| UserId::from_bytes([0; 16]));
    let mut conditions = vec![format!("id > {}", b.param(Param::Id(after)))];
    if let Some(email) = &query.email {
        conditions.push(b.condition(&UserCondition::Email(email.clone())));
    }
    if let Some(prefix) = &query.email_prefix {
        conditions.push(b.condition(&UserCondition::EmailPrefix(prefix.clone())));
    }
    if let Some(status) = query.status {
        conditions.push(format!("status = {}", b.param(Param::Text(status.as_str().to_owned()))));
    }
    if let Some(role) = query.role {
        conditions.push(format!("role = {}", b.param(Param::Text(role.as_str().to_owned()))));
    }
    // As in `select`: SQLite would otherwise walk the whole primary key rather than sort
    // the few rows the email index finds.
    let narrowed = query.email.is_some() || query.email_prefix.is_some();
    let order = if narrowed && matches!(dialect, Dialect::Sqlite) { "+id" } else { "id" };
    let limit = b.param(Param::Int(i64::from(query.limit)));
    Built {
        sql: format!("SELECT {columns} FROM users WHERE {} ORDER BY {order} LIMIT {limit}", conditions.join(" AND ")),
        params: b.params,
    }
}

/// Whether a list query needs [`list_page`] rather than the fixed statements.
pub(crate) fn needs_list_page(query: &UserListQuery) -> bool {
    query.email_prefix.is_some() || query.status.is_some() || query.role.is_some()
}

/// `SELECT count(*) FROM users WHERE …`.
pub(crate) fn count(dialect: Dialect, predicate: Option<&UserPredicate>) -> Built {
    let mut b = Builder { dialect, params: Vec::new() };
    let filter = predicate.map(|p| format!(" WHERE {}", b.predicate(p))).unwrap_or_default();
    Built { sql: format!("SELECT count(*) FROM users{filter}"), params: b.params }
}

/// The searches the EXPLAIN tests hold to an index, with sample values.
pub(crate) fn sample_searches() -> Vec<(&'static str, UserSearch)> {
    use strata_core::domain::Email;
    use strata_core::groups::{EnterpriseText, ExternalId};
    let email = |e: &str| Email::parse(e).ok().map(UserCondition::Email);
    let mut out = Vec::new();
    let is = |c: UserCondition| UserPredicate::Is(c);
    let search = |p: UserPredicate| UserSearch { predicate: Some(p), limit: 100, ..UserSearch::default() };
    out.push(("search_users_email_prefix", search(is(UserCondition::EmailPrefix("plan1".into())))));
    if let (Some(a), Some(b)) = (email("plan1@example.com"), email("plan2@example.com")) {
        out.push(("search_users_email_or_email", search(UserPredicate::Any(vec![is(a), is(b)]))));
    }
    if let Ok(e) = ExternalId::parse("x") {
        out.push(("search_users_external_id", search(is(UserCondition::ExternalId(e)))));
    }
    if let Ok(n) = EnterpriseText::parse("employee_number", "x") {
        out.push(("search_users_employee_number", search(is(UserCondition::EmployeeNumber(n)))));
    }
    out.push((
        "search_users_updated_after",
        search(is(UserCondition::UpdatedAt(Comparison::Greater, Timestamp(i64::MAX - 1)))),
    ));
    out.push((
        "search_users_prefix_and_updated",
        search(UserPredicate::All(vec![
            is(UserCondition::EmailPrefix("plan1".into())),
            is(UserCondition::UpdatedAt(Comparison::GreaterOrEqual, Timestamp(0))),
        ])),
    ));
    out
}

/// The filtered list pages the EXPLAIN tests hold to an index (the email index for a
/// prefix, the primary key otherwise), with sample values.
pub(crate) fn sample_list_pages() -> Vec<(&'static str, UserListQuery)> {
    use strata_core::domain::{Role, UserStatus};
    let base = UserListQuery { after: None, limit: 51, email: None, email_prefix: None, status: None, role: None };
    vec![
        ("list_users_email_prefix", UserListQuery { email_prefix: Some("plan1".into()), ..base.clone() }),
        (
            "list_users_prefix_status_role",
            UserListQuery {
                email_prefix: Some("plan1".into()),
                status: Some(UserStatus::Disabled),
                role: Some(Role::Admin),
                ..base.clone()
            },
        ),
        ("list_users_status", UserListQuery { status: Some(UserStatus::Disabled), ..base }),
    ]
}

/// The sample searches as each dialect's SQL, built once: EXPLAIN reports name the SQL
/// they planned, for as long as the process runs.
pub(crate) fn sample_plans(dialect: Dialect, columns: &'static str) -> &'static [(&'static str, Built)] {
    use std::sync::OnceLock;
    static SQLITE: OnceLock<Vec<(&'static str, Built)>> = OnceLock::new();
    static POSTGRES: OnceLock<Vec<(&'static str, Built)>> = OnceLock::new();
    static MYSQL: OnceLock<Vec<(&'static str, Built)>> = OnceLock::new();
    let cell = match dialect {
        Dialect::Sqlite => &SQLITE,
        Dialect::Postgres => &POSTGRES,
        Dialect::Mysql => &MYSQL,
    };
    cell.get_or_init(|| {
        let searches = sample_searches().into_iter().map(|(name, s)| (name, select(dialect, columns, &s)));
        let pages = sample_list_pages().into_iter().map(|(name, q)| (name, list_page(dialect, columns, &q)));
        searches.chain(pages).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_prefix_is_the_least_upper_bound() {
        assert_eq!(next_prefix("ab").as_deref(), Some("ac"));
        assert_eq!(next_prefix("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(next_prefix("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(next_prefix("\u{10FFFF}"), None);
        assert_eq!(next_prefix(""), None);
    }

    #[test]
    fn builds_numbered_or_anonymous_parameters() {
        let search = UserSearch {
            predicate: Some(UserPredicate::Any(vec![
                UserPredicate::Is(UserCondition::EmailPrefix("ab".into())),
                UserPredicate::Is(UserCondition::UpdatedAt(Comparison::Less, Timestamp(5))),
            ])),
            order: UserOrder::Email,
            descending: true,
            offset: 10,
            limit: 20,
        };
        let pg = select(Dialect::Postgres, "id", &search);
        assert_eq!(
            pg.sql,
            "SELECT id FROM users WHERE (((email COLLATE \"C\") >= $1 AND (email COLLATE \"C\") < $2) OR updated_at < $3) \
             ORDER BY email DESC, id ASC LIMIT $4 OFFSET $5"
        );
        assert_eq!(pg.params.len(), 5);
        let my = select(Dialect::Mysql, "id", &search);
        assert!(my.sql.contains("(email >= ? AND email < ?)"), "{}", my.sql);
        let lite = count(Dialect::Sqlite, search.predicate.as_ref());
        assert_eq!(lite.sql, "SELECT count(*) FROM users WHERE ((email >= ?1 AND email < ?2) OR updated_at < ?3)");
    }
}
