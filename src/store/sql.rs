//! Statements of dynamic shape, shared by every table: placeholders for
//! each backend ([`Params`]), `IN` lists padded so their statements are
//! prepared once ([`InList`]), and the rule of which statements the
//! connection caches ([`query`]).
//!
//! Placeholders: SQLite gets its anonymous `?`, bound in order: SQLite finds
//! a named `$N` by a linear walk, in its parser and again when sqlx binds it,
//! so a statement with many `$N` costs the square of its parameters
//! (measured: 25,000 took seconds), while `?` costs nothing. PostgreSQL only
//! knows `$N` (and looks it up directly).

use sqlx::any::AnyArguments;
use sqlx::query::Query;

use super::Backend;

/// A query bound through sqlx's `Any` driver.
pub(super) type AnyQuery<'q> = Query<'q, sqlx::Any, AnyArguments>;

/// Most bound parameters per statement (SQLite allows 32766, PostgreSQL 65535).
pub(super) const MAX_PARAMS: usize = 3_000;
/// Most values in one `IN (...)` list.
pub(super) const MAX_IN: usize = 500;

/// The placeholders of one statement, numbered in binding order.
pub(super) struct Params {
    backend: Backend,
    next: usize,
}

impl Params {
    pub(super) fn new(backend: Backend) -> Self {
        Self { backend, next: 0 }
    }

    /// The next placeholder.
    pub(super) fn one(&mut self) -> String {
        self.next += 1;
        match self.backend {
            Backend::Sqlite => "?".to_owned(),
            Backend::Postgres => format!("${}", self.next),
        }
    }

    /// `?, ?, ?` (`$1, $2, $3`) for an `IN` list (or a row) of `n` values.
    pub(super) fn list(&mut self, n: usize) -> String {
        (0..n).map(|_| self.one()).collect::<Vec<_>>().join(", ")
    }

    /// `(?, ?), (?, ?)` for `rows` rows of `cols` columns.
    pub(super) fn values(&mut self, rows: usize, cols: usize) -> String {
        (0..rows)
            .map(|_| format!("({})", self.list(cols)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Chunks this small are common (a reply batch of one in a chain) and few
/// in shape, so they are prepared once and cached like static SQL.
pub(super) const SMALL: usize = 8;

/// A statement of dynamic shape. Full chunks (one shape per batch kind),
/// small ones and powers of two (every padded `IN` list, see [`InList`])
/// are prepared once and cached by the connection; parsing one again costs
/// as much as running it. Other sizes are not worth a slot.
pub(super) fn query<'q>(sql: String, full: bool, rows: usize) -> AnyQuery<'q> {
    statement(sql, full || rows <= SMALL || rows.is_power_of_two())
}

/// A statement of dynamic shape, prepared once and cached if `cached`.
pub(super) fn statement<'q>(sql: String, cached: bool) -> AnyQuery<'q> {
    // Built from fixed text and placeholders only: every value is bound.
    sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(cached)
}

/// The values of one `IN (...)` list, padded to a power of two (at most
/// [`MAX_IN`]) by repeating the last one: a statement with such a list
/// takes ten shapes at most, each prepared once (see [`query`]), where an
/// exact list took one per size and was parsed again each time (a reply
/// batch of 19 tasks: its read cost ~600 µs on SQLite, most of it parsing).
pub(super) struct InList<'a, T> {
    values: &'a [T],
    len: usize,
}

impl<'a, T> InList<'a, T> {
    pub(super) fn new(values: &'a [T]) -> Self {
        let len = values.len().next_power_of_two().min(MAX_IN);
        Self {
            values,
            len: len.max(values.len()),
        }
    }

    /// The placeholders the list needs.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The values to bind, padding included.
    pub(super) fn values(&self) -> impl Iterator<Item = &'a T> + use<'a, T> {
        let pad = self.len - self.values.len();
        self.values
            .iter()
            .chain(self.values.last().into_iter().cycle().take(pad))
    }
}

#[cfg(test)]
mod tests {
    use super::{Backend, InList, MAX_IN, Params};

    #[test]
    fn in_lists_are_padded_to_a_power_of_two_with_the_last_value() {
        let v = [1, 2, 3];
        let list = InList::new(&v);
        assert_eq!(list.len(), 4);
        assert_eq!(list.values().copied().collect::<Vec<_>>(), vec![1, 2, 3, 3]);
        let one = InList::new(&v[..1]);
        assert_eq!(one.values().copied().collect::<Vec<_>>(), vec![1]);
        let many: Vec<usize> = (0..300).collect();
        let list = InList::new(&many);
        assert_eq!(list.len(), MAX_IN);
        assert_eq!(list.values().count(), MAX_IN);
        assert_eq!(list.values().last(), Some(&299));
    }

    #[test]
    fn placeholders() {
        assert_eq!(Params::new(Backend::Sqlite).values(2, 2), "(?, ?), (?, ?)");
        assert_eq!(Params::new(Backend::Sqlite).list(3), "?, ?, ?");
        let mut pg = Params::new(Backend::Postgres);
        assert_eq!(pg.one(), "$1");
        assert_eq!(pg.values(2, 2), "($2, $3), ($4, $5)");
        assert_eq!(pg.list(2), "$6, $7");
    }
}
