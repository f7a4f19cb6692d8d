// SPDX-License-Identifier: GPL-3.0-or-later
//! The one SQL surface both backends speak: a statement is written once, with `?1`, `?2`…
//! placeholders and the `rowid` tie-break of SQLite; PostgreSQL gets `$1`, `$2`… and its
//! `seq` column instead ([`pg_text`]). Values cross as [`Val`] (NULL, a 64-bit integer, text,
//! bytes) and rows come back as [`Row`], whose getters fail on a NULL or a wrong type instead
//! of defaulting. Booleans are stored as integers 0/1 in both backends, so one statement
//! fits both.

use std::borrow::Cow;

use crate::error::{Result, bail, err};
use rusqlite::types::{ToSqlOutput, ValueRef};

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val {
    /// SQL NULL.
    Null,
    /// An integer (SQLite INTEGER, PostgreSQL BIGINT; INT4/INT2 are converted, range-checked).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes (SQLite BLOB, PostgreSQL BYTEA).
    Blob(Vec<u8>),
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}
impl From<&String> for Val {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}
impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<u64> for Val {
    /// Unix times, counts, nonces, chain ids: all below 2^63 in practice; a larger value is
    /// clamped rather than wrapped into a negative one.
    fn from(v: u64) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Self {
        Self::Int(v.into())
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Self {
        Self::Int(v.into())
    }
}
impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Self {
        Self::Blob(v.to_vec())
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Self {
        v.map_or(Self::Null, Into::into)
    }
}

/// Builds a `&[Val]` from expressions of any type with an `Into<Val>`.
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::store::sql::Val::from($v)),*][..] };
}
pub(crate) use vals;

/// One row read back.
#[derive(Debug, Clone)]
pub(crate) struct Row(pub(crate) Vec<Val>);

impl Row {
    fn at(&self, i: usize) -> Result<&Val> {
        self.0.get(i).ok_or_else(|| {
            err!(
                "the store returned {} columns, column {i} was wanted",
                self.0.len()
            )
        })
    }

    /// Column `i` as text (NULL is an error).
    pub(crate) fn text(&self, i: usize) -> Result<String> {
        self.opt_text(i)?
            .ok_or_else(|| err!("the store returned NULL in column {i}, where text was expected"))
    }

    /// Column `i` as text or NULL.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Text(s) => Ok(Some(s.clone())),
            other => bail!("the store returned {other:?} in column {i}, where text was expected"),
        }
    }

    /// Column `i` as an integer or NULL.
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>> {
        match self.at(i)? {
            Val::Null => Ok(None),
            Val::Int(v) => Ok(Some(*v)),
            other => {
                bail!("the store returned {other:?} in column {i}, where an integer was expected")
            }
        }
    }

    /// Column `i` as an integer (NULL is an error).
    pub(crate) fn int(&self, i: usize) -> Result<i64> {
        self.opt_int(i)?.ok_or_else(|| {
            err!("the store returned NULL in column {i}, where an integer was expected")
        })
    }

    /// Column `i` as a non-negative integer (times, counts).
    pub(crate) fn u64(&self, i: usize) -> Result<u64> {
        let v = self.int(i)?;
        u64::try_from(v).map_err(|_| err!("the store holds {v} in column {i}, below zero"))
    }

    /// Column `i` as a non-negative integer or NULL.
    pub(crate) fn opt_u64(&self, i: usize) -> Result<Option<u64>> {
        self.opt_int(i)?
            .map(|v| {
                u64::try_from(v).map_err(|_| err!("the store holds {v} in column {i}, below zero"))
            })
            .transpose()
    }

    /// Column `i` as a u32 (sizes, leaf numbers).
    pub(crate) fn u32(&self, i: usize) -> Result<u32> {
        let v = self.int(i)?;
        u32::try_from(v).map_err(|_| err!("the store holds {v} in column {i}, out of range"))
    }

    /// Column `i` as a u32 or NULL.
    pub(crate) fn opt_u32(&self, i: usize) -> Result<Option<u32>> {
        self.opt_int(i)?
            .map(|v| {
                u32::try_from(v)
                    .map_err(|_| err!("the store holds {v} in column {i}, out of range"))
            })
            .transpose()
    }

    /// Column `i` as a 0/1 flag.
    pub(crate) fn flag(&self, i: usize) -> Result<bool> {
        Ok(self.int(i)? != 0)
    }

    /// Column `i` as bytes.
    pub(crate) fn blob(&self, i: usize) -> Result<Vec<u8>> {
        match self.at(i)? {
            Val::Blob(b) => Ok(b.clone()),
            other => bail!("the store returned {other:?} in column {i}, where bytes were expected"),
        }
    }

    /// Column `i` parsed as a stored enum: an unknown word is an error, never a default.
    pub(crate) fn word<T>(&self, i: usize) -> Result<T>
    where
        T: std::str::FromStr<Err = super::UnknownValue>,
    {
        self.text(i)?.parse::<T>().map_err(|e| err!("{e}"))
    }
}

/// A connection or transaction of either backend.
pub(crate) trait Sql {
    /// Runs a statement; how many rows it changed.
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64>;
    /// Runs a query; every row.
    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>>;
    /// Runs a query expected to return at most one row.
    fn query_opt(&mut self, sql: &str, params: &[Val]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
    /// Runs a query expected to return exactly one row.
    fn query_one(&mut self, sql: &str, params: &[Val]) -> Result<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| err!("the store returned no row where one was expected"))
    }
}

/// SQLite's side: one connection (its transactions are statements on it).
pub(crate) struct Lite<'a>(pub(crate) &'a rusqlite::Connection);

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Val::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Val::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Val::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn lite_val(v: ValueRef<'_>) -> Result<Val> {
    Ok(match v {
        ValueRef::Null => Val::Null,
        ValueRef::Integer(i) => Val::Int(i),
        ValueRef::Text(t) => Val::Text(
            std::str::from_utf8(t)
                .map_err(|e| err!("the store holds text that is not UTF-8: {e}"))?
                .to_owned(),
        ),
        ValueRef::Blob(b) => Val::Blob(b.to_vec()),
        ValueRef::Real(r) => bail!("the store holds a real number ({r}) where none is expected"),
    })
}

impl Sql for Lite<'_> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let mut st = self.0.prepare_cached(sql)?;
        Ok(st.execute(rusqlite::params_from_iter(params))? as u64)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        let mut st = self.0.prepare_cached(sql)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let mut vals = Vec::with_capacity(n);
            for i in 0..n {
                vals.push(lite_val(r.get_ref(i)?)?);
            }
            out.push(Row(vals));
        }
        Ok(out)
    }
}

/// A statement in PostgreSQL's spelling: `?N` → `$N`, the `rowid` tie-break → `seq` (the
/// BIGSERIAL column the PostgreSQL schema has where SQLite orders by its implicit rowid).
pub(crate) fn pg_text(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') && !sql.contains("rowid") {
        return Cow::Borrowed(sql);
    }
    Cow::Owned(sql.replace('?', "$").replace("rowid", "seq"))
}

/// PostgreSQL's side: a client or a transaction of one pooled connection.
pub(crate) struct Pg<'a, C: postgres::GenericClient>(pub(crate) &'a mut C);

mod pg_types {
    use super::Val;
    use postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

    type BoxError = Box<dyn std::error::Error + Sync + Send>;

    impl ToSql for Val {
        fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
            match self {
                Val::Null => Ok(IsNull::Yes),
                // The server infers each parameter's type from the statement: an integer
                // compared with a literal is INT4, a column is INT8; fit the value to it.
                Val::Int(v) => match *ty {
                    Type::INT8 => v.to_sql(ty, out),
                    Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                    Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                    Type::BOOL => (*v != 0).to_sql(ty, out),
                    _ => v.to_string().to_sql(ty, out),
                },
                Val::Text(s) => s.to_sql(ty, out),
                Val::Blob(b) => b.to_sql(ty, out),
            }
        }

        fn accepts(ty: &Type) -> bool {
            matches!(
                *ty,
                Type::INT8
                    | Type::INT4
                    | Type::INT2
                    | Type::BOOL
                    | Type::TEXT
                    | Type::VARCHAR
                    | Type::BPCHAR
                    | Type::NAME
                    | Type::UNKNOWN
                    | Type::BYTEA
            )
        }

        to_sql_checked!();
    }

    impl<'a> FromSql<'a> for Val {
        fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
            Ok(match *ty {
                Type::INT8 => Val::Int(i64::from_sql(ty, raw)?),
                Type::INT4 => Val::Int(i32::from_sql(ty, raw)?.into()),
                Type::INT2 => Val::Int(i16::from_sql(ty, raw)?.into()),
                Type::BOOL => Val::Int(bool::from_sql(ty, raw)?.into()),
                Type::BYTEA => Val::Blob(Vec::<u8>::from_sql(ty, raw)?),
                _ => Val::Text(String::from_sql(ty, raw)?),
            })
        }

        fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
            Ok(Val::Null)
        }

        fn accepts(ty: &Type) -> bool {
            <Val as ToSql>::accepts(ty)
        }
    }
}

impl<C: postgres::GenericClient> Sql for Pg<'_, C> {
    fn exec(&mut self, sql: &str, params: &[Val]) -> Result<u64> {
        let p: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
            .collect();
        Ok(self.0.execute(pg_text(sql).as_ref(), &p)?)
    }

    fn query(&mut self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        let p: Vec<&(dyn postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|v| v as &(dyn postgres::types::ToSql + Sync))
            .collect();
        let rows = self.0.query(pg_text(sql).as_ref(), &p)?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| Ok(r.try_get::<_, Val>(i)?))
                    .collect::<Result<Vec<_>>>()
                    .map(Row)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_the_tie_break_are_spelled_for_postgres() {
        assert_eq!(
            pg_text("SELECT a FROM t WHERE b = ?1 AND c = ?12 ORDER BY since, rowid"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 ORDER BY since, seq"
        );
        assert!(matches!(pg_text("SELECT 1"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_row_getter_refuses_null_and_wrong_types() {
        let r = Row(vec![Val::Null, Val::Int(-1), Val::Text("x".into())]);
        assert!(r.text(0).is_err());
        assert_eq!(r.opt_text(0).unwrap(), None);
        assert!(r.u64(1).is_err(), "below zero");
        assert_eq!(r.int(1).unwrap(), -1);
        assert!(r.int(2).is_err());
        assert!(r.text(3).is_err(), "no such column");
    }
}
