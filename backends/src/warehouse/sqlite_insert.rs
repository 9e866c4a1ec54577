//! The embedded warehouse's row insert, binding text without copying it.
//!
//! rusqlite binds every text parameter as `SQLITE_TRANSIENT`: SQLite copies the string into
//! memory of its own (an allocation and a copy per cell) before the row is even built. The load
//! binds hundreds of millions of cells straight from Arrow buffers that outlive the row, so
//! [`RowInsert`] binds them as `SQLITE_STATIC` and clears every binding before it returns: no
//! pointer to a cell is left in the statement after the row it was bound for.

use std::ffi::{c_char, c_int};

use rusqlite::ffi;
use rusqlite::types::ValueRef;

/// One prepared statement, executed a row at a time from borrowed values (see the module's
/// comment). It borrows its connection, so it cannot outlive it.
pub(super) struct RowInsert<'c> {
    db: *mut ffi::sqlite3,
    stmt: *mut ffi::sqlite3_stmt,
    _conn: std::marker::PhantomData<&'c rusqlite::Connection>,
}

impl<'c> RowInsert<'c> {
    /// Prepares `sql` (one statement) on `conn`.
    pub(super) fn prepare(conn: &'c rusqlite::Connection, sql: &str) -> Result<Self, String> {
        // SAFETY: the handle is the live connection's, borrowed for 'c; it is only used on
        // this thread, through this statement, while the borrow lasts.
        let db = unsafe { conn.handle() };
        let mut stmt = std::ptr::null_mut();
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast::<c_char>(),
                sql.len() as c_int,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        let insert = RowInsert {
            db,
            stmt,
            _conn: std::marker::PhantomData,
        };
        if rc != ffi::SQLITE_OK || stmt.is_null() {
            return Err(insert.error(rc, "preparing the insert"));
        }
        Ok(insert)
    }

    /// Inserts one row: the `i`-th value binds parameter `i + 1` (the first value that could not
    /// be read stops the row with its reason). Text and blobs are bound in place, and every
    /// binding is cleared again before this returns.
    pub(super) fn execute<'v>(
        &mut self,
        values: impl IntoIterator<Item = Result<ValueRef<'v>, String>>,
    ) -> Result<(), String> {
        let bound = values
            .into_iter()
            .enumerate()
            .try_for_each(|(i, v)| self.bind(i as c_int + 1, v?));
        let stepped = bound.and_then(|()| self.step());
        // SAFETY: the statement is live; after this no binding points into `values`.
        unsafe { ffi::sqlite3_clear_bindings(self.stmt) };
        stepped
    }

    fn bind(&mut self, at: c_int, v: ValueRef<'_>) -> Result<(), String> {
        let s = self.stmt;
        // SAFETY: text and blob pointers are valid for their lengths for the whole of
        // `execute`, which clears the bindings before its borrow of them ends (SQLITE_STATIC).
        let rc = unsafe {
            match v {
                ValueRef::Null => ffi::sqlite3_bind_null(s, at),
                ValueRef::Integer(i) => ffi::sqlite3_bind_int64(s, at, i),
                ValueRef::Real(r) => ffi::sqlite3_bind_double(s, at, r),
                ValueRef::Text(t) => ffi::sqlite3_bind_text64(
                    s,
                    at,
                    non_null(t).cast::<c_char>(),
                    t.len() as ffi::sqlite3_uint64,
                    ffi::SQLITE_STATIC(),
                    ffi::SQLITE_UTF8 as u8,
                ),
                ValueRef::Blob(b) => ffi::sqlite3_bind_blob64(
                    s,
                    at,
                    non_null(b).cast(),
                    b.len() as ffi::sqlite3_uint64,
                    ffi::SQLITE_STATIC(),
                ),
            }
        };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.error(rc, &format!("binding parameter {at}")))
        }
    }

    /// Runs the bound row and resets the statement for the next one.
    fn step(&mut self) -> Result<(), String> {
        // SAFETY: the statement is live and all its parameters are bound.
        let rc = unsafe { ffi::sqlite3_step(self.stmt) };
        let error = (rc != ffi::SQLITE_DONE).then(|| self.error(rc, "inserting a row"));
        // SAFETY: as above; a reset after an error returns the same error, already taken.
        unsafe { ffi::sqlite3_reset(self.stmt) };
        error.map_or(Ok(()), Err)
    }

    /// SQLite's message for result code `rc`, read right after the call that returned it (the
    /// caller names the file or statement).
    fn error(&self, rc: c_int, doing: &str) -> String {
        // SAFETY: the connection is live; the message is copied before any other call.
        let msg = unsafe {
            let m = ffi::sqlite3_errmsg(self.db);
            if m.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr(m).to_string_lossy().into_owned()
            }
        };
        format!("{doing}: {msg} (SQLite code {rc})")
    }
}

/// A pointer SQLite may take for a value of length 0 too (never dangling).
fn non_null(b: &[u8]) -> *const u8 {
    if b.is_empty() {
        b"".as_ptr()
    } else {
        b.as_ptr()
    }
}

impl Drop for RowInsert<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement was prepared on this connection and is finalized once.
        unsafe { ffi::sqlite3_finalize(self.stmt) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<'v>(
        values: impl IntoIterator<Item = ValueRef<'v>>,
    ) -> impl Iterator<Item = Result<ValueRef<'v>, String>> {
        values.into_iter().map(Ok)
    }

    #[test]
    fn rows_bound_in_place_are_stored_and_no_binding_outlives_its_row() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, c REAL, d BLOB, e TEXT)")
            .unwrap();
        let mut ins =
            RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        for i in 0..3i64 {
            // A fresh buffer per row, freed right after it: a binding kept past its row would
            // read freed memory (and Miri or ASan would say so; here the values would differ).
            let text = format!("row-{i}");
            let blob = vec![i as u8; 3];
            ins.execute(ok([
                ValueRef::Text(text.as_bytes()),
                ValueRef::Integer(i),
                ValueRef::Real(i as f64 / 2.0),
                ValueRef::Blob(&blob),
                ValueRef::Text(b""),
            ]))
            .unwrap();
        }
        drop(ins);
        let rows: Vec<(String, i64, f64, Vec<u8>, String)> = conn
            .prepare("SELECT a, b, c, d, e FROM t ORDER BY b")
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[2],
            ("row-2".into(), 2, 1.0, vec![2, 2, 2], String::new())
        );
    }

    #[test]
    fn a_failed_row_names_sqlite_s_reason_and_the_statement_goes_on() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .unwrap();
        let mut ins = RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2)").unwrap();
        ins.execute(ok([ValueRef::Text(b"a"), ValueRef::Integer(1)]))
            .unwrap();
        let e = ins
            .execute(ok([ValueRef::Text(b"a"), ValueRef::Integer(2)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("UNIQUE constraint failed: t.k"), "{e}");
        let e = ins
            .execute(ok([ValueRef::Text(b"b"), ValueRef::Null]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("NOT NULL constraint failed: t.v"), "{e}");
        ins.execute(ok([ValueRef::Text(b"c"), ValueRef::Integer(3)]))
            .unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(
            RowInsert::prepare(&conn, "INSERT INTO nowhere VALUES (1)")
                .err()
                .unwrap()
                .to_string()
                .contains("no such table: nowhere")
        );
    }

    #[test]
    fn a_value_that_cannot_be_read_stops_its_row_with_the_reason_and_inserts_nothing() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER)")
            .unwrap();
        let mut ins = RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2)").unwrap();
        let e = ins
            .execute([
                Ok(ValueRef::Text(b"x")),
                Err("unsupported column type".into()),
            ])
            .unwrap_err();
        assert_eq!(e, "unsupported column type");
        ins.execute(ok([ValueRef::Text(b"y"), ValueRef::Integer(1)]))
            .unwrap();
        let rows: Vec<(String, i64)> = conn
            .prepare("SELECT a, b FROM t")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [("y".to_string(), 1)]);
    }
}
