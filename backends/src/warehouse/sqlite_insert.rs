//! The embedded warehouse's row insert, binding text without copying it.
//!
//! rusqlite binds every text parameter as `SQLITE_TRANSIENT`: SQLite copies the string into
//! memory of its own (an allocation and a copy per cell) before the row is even built. The load
//! binds hundreds of millions of cells straight from Arrow buffers that outlive a file's rows,
//! so [`FileRows`] binds them as `SQLITE_STATIC`, binds what every row of a file shares (its
//! partition values and lineage) once, and clears every binding when the file is done: no
//! pointer to a cell is left in the statement after the data it points into. A value that lives
//! only for its row (written into a reused buffer, as a long decimal's text is) is bound as
//! `SQLITE_TRANSIENT`.
//!
//! [`GroupInsert`] runs a file's rows [`GROUP_ROWS`] at a time through one multi-row statement
//! (and the last few one by one), so SQLite's cost of running a statement is paid per group.

use std::ffi::{c_char, c_int};
use std::marker::PhantomData;

use rusqlite::ffi;
use rusqlite::types::ValueRef;

/// One prepared statement, run with borrowed values bound (see the module's
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

    /// The rows of one file: values borrowed for `'v` are bound in place and may stay bound from
    /// row to row, so every binding is cleared when the [`FileRows`] is dropped.
    pub(super) fn rows<'i, 'v>(&'i mut self) -> FileRows<'i, 'c, 'v> {
        FileRows {
            insert: self,
            _values: PhantomData,
        }
    }

    /// Binds parameter `at`: text and blobs in place (`SQLITE_STATIC`) or copied by SQLite
    /// (`SQLITE_TRANSIENT`), as `lasting` says.
    ///
    /// # Safety
    /// With `lasting`, a text or blob value must stay valid until the binding is replaced or
    /// cleared ([`FileRows`] ensures it for its `'v`).
    unsafe fn bind(&mut self, at: c_int, v: ValueRef<'_>, lasting: bool) -> Result<(), String> {
        let s = self.stmt;
        let kept = if lasting {
            ffi::SQLITE_STATIC()
        } else {
            ffi::SQLITE_TRANSIENT()
        };
        // SAFETY: text and blob pointers are valid for their lengths for as long as SQLite reads
        // them: until the binding is replaced or cleared when `lasting` (the caller's promise),
        // during the call otherwise (SQLite copies them before it returns).
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
                    kept,
                    ffi::SQLITE_UTF8 as u8,
                ),
                ValueRef::Blob(b) => ffi::sqlite3_bind_blob64(
                    s,
                    at,
                    non_null(b).cast(),
                    b.len() as ffi::sqlite3_uint64,
                    kept,
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

/// A value of a row: borrowed for as long as the file's rows are inserted (`Kept`, bound in
/// place), or only for its row (`Row`: SQLite copies it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Bound<'v, 'r> {
    Kept(ValueRef<'v>),
    Row(ValueRef<'r>),
}

/// The rows of one file through a [`RowInsert`] ([`RowInsert::rows`]). Values borrowed for `'v`
/// stay bound from one row to the next until replaced, and every binding is cleared when this
/// is dropped, so none outlives `'v`. Each row binds every parameter not bound for the whole
/// file; a parameter a row leaves out keeps the row before's value.
pub(super) struct FileRows<'i, 'c, 'v> {
    insert: &'i mut RowInsert<'c>,
    _values: PhantomData<&'v [u8]>,
}

impl<'v> FileRows<'_, '_, 'v> {
    /// Binds parameter `at` for every row of the file (a partition value, lineage, a NULL).
    pub(super) fn bind_each(&mut self, at: c_int, v: ValueRef<'v>) -> Result<(), String> {
        // SAFETY: `v` lives for 'v, which outlives this FileRows, whose drop clears it.
        unsafe { self.insert.bind(at, v, true) }
    }

    /// Inserts one row: each of `values` binds its parameter (the first that could not be read
    /// stops the row with its reason, and nothing is inserted).
    pub(super) fn execute<'r>(
        &mut self,
        values: impl IntoIterator<Item = Result<(c_int, Bound<'v, 'r>), String>>,
    ) -> Result<(), String> {
        self.bind_row(0, values)?;
        self.insert.step()
    }

    /// Binds a row's `values`, each at its parameter plus `offset` (a row's place in a statement
    /// that inserts several), without running the statement.
    fn bind_row<'r>(
        &mut self,
        offset: c_int,
        values: impl IntoIterator<Item = Result<(c_int, Bound<'v, 'r>), String>>,
    ) -> Result<(), String> {
        for v in values {
            // SAFETY: a kept value lives for 'v (as in `bind_each`); a row's value is copied.
            match v? {
                (at, Bound::Kept(v)) => unsafe { self.insert.bind(offset + at, v, true)? },
                (at, Bound::Row(v)) => unsafe { self.insert.bind(offset + at, v, false)? },
            }
        }
        Ok(())
    }
}

/// Rows this many at a time through one statement (`VALUES (…), (…), …`): a statement's
/// run costs SQLite work of its own (its start and reset, its cursors opened, placed at the
/// b-tree's root and closed, its end), which a multi-row statement pays once per group
/// instead of once per row. BENCHMARKS.md (stop 30) has the measurements.
pub(super) const GROUP_ROWS: usize = 32;

/// A table's insert, [`GROUP_ROWS`] rows per statement run (fewer if so many parameters exceed
/// the connection's limit) and one at a time for the rows of a file after its last whole
/// group. Each row's parameters follow the row before's: parameter `at` of the `j`-th row of
/// a group is `j * width + at`.
pub(super) struct GroupInsert<'c> {
    many: RowInsert<'c>,
    one: RowInsert<'c>,
    group: usize,
    width: usize,
}

impl<'c> GroupInsert<'c> {
    /// Prepares the statements `sql(rows)` for a group and for one row, of `width` parameters a
    /// row.
    pub(super) fn prepare(
        conn: &'c rusqlite::Connection,
        width: usize,
        sql: impl Fn(usize) -> String,
    ) -> Result<Self, String> {
        let group = group_rows(conn, width);
        Ok(GroupInsert {
            many: RowInsert::prepare(conn, &sql(group))?,
            one: RowInsert::prepare(conn, &sql(1))?,
            group,
            width,
        })
    }

    /// The `rows` rows of one file (see [`FileRows`]: the bindings are cleared when they end).
    pub(super) fn rows<'i, 'v>(&'i mut self, rows: usize) -> GroupRows<'i, 'c, 'v> {
        GroupRows {
            grouped: rows / self.group * self.group,
            group: self.group,
            width: self.width,
            next: 0,
            many: self.many.rows(),
            one: self.one.rows(),
        }
    }
}

/// Rows a statement of `width` parameters a row inserts at a run: [`GROUP_ROWS`], or as many as
/// the connection's parameter limit allows (at least one).
fn group_rows(conn: &rusqlite::Connection, width: usize) -> usize {
    // SAFETY: the connection is live; a negative value only reads the limit.
    let limit = unsafe { ffi::sqlite3_limit(conn.handle(), ffi::SQLITE_LIMIT_VARIABLE_NUMBER, -1) };
    let most = usize::try_from(limit).unwrap_or(0) / width.max(1);
    most.clamp(1, GROUP_ROWS)
}

/// One file's rows through a [`GroupInsert`]: whole groups through the multi-row statement, the
/// rest one by one.
pub(super) struct GroupRows<'i, 'c, 'v> {
    /// Rows that go in whole groups (the file's first ones).
    grouped: usize,
    group: usize,
    width: usize,
    /// The file's next row.
    next: usize,
    many: FileRows<'i, 'c, 'v>,
    one: FileRows<'i, 'c, 'v>,
}

impl<'v> GroupRows<'_, '_, 'v> {
    /// Binds parameter `at` for every row of the file (see [`FileRows::bind_each`]).
    pub(super) fn bind_each(&mut self, at: c_int, v: ValueRef<'v>) -> Result<(), String> {
        self.one.bind_each(at, v)?;
        (0..self.group).try_for_each(|j| self.many.bind_each(self.offset(j) + at, v))
    }

    /// Takes the file's next row (see [`FileRows::execute`]); a row that completes a group
    /// inserts the group. A row that cannot be read stops the file's rows with its reason;
    /// the rows of its group before it are not inserted either.
    pub(super) fn execute<'r>(
        &mut self,
        values: impl IntoIterator<Item = Result<(c_int, Bound<'v, 'r>), String>>,
    ) -> Result<(), String> {
        let row = self.next;
        self.next += 1;
        if row >= self.grouped {
            return self.one.execute(values);
        }
        let j = row % self.group;
        self.many.bind_row(self.offset(j), values)?;
        if j + 1 == self.group {
            self.many.insert.step()?;
        }
        Ok(())
    }

    /// The parameter offset of the `j`-th row of a group.
    fn offset(&self, j: usize) -> c_int {
        (j * self.width) as c_int
    }
}

impl Drop for FileRows<'_, '_, '_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live; after this no binding points into 'v.
        unsafe { ffi::sqlite3_clear_bindings(self.insert.stmt) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `values` as a row's values, parameter by parameter from 1, each kept or copied by `how`.
    fn row<'v>(
        values: impl IntoIterator<Item = ValueRef<'v>>,
    ) -> impl Iterator<Item = Result<(c_int, Bound<'v, 'v>), String>> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| Ok((i as c_int + 1, Bound::Kept(v))))
    }

    fn rows_of(conn: &rusqlite::Connection, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut st = conn.prepare(sql).unwrap();
        let n = st.column_count();
        st.query_map([], |r| (0..n).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn kept_shared_and_copied_values_are_stored_and_no_binding_outlives_its_file() {
        use rusqlite::types::Value;
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, c BLOB, d TEXT, e TEXT)")
            .unwrap();
        let mut ins =
            RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        for file in 0..2 {
            // The file's data, freed after its rows: a binding kept past the file would read
            // freed memory (Miri or ASan would say so; here the stored values would differ).
            let texts: Vec<String> = (0..3).map(|i| format!("f{file}-row-{i}")).collect();
            let shared = format!("file-{file}");
            let blob = vec![file as u8; 3];
            let mut rows = ins.rows();
            rows.bind_each(4, ValueRef::Text(shared.as_bytes()))
                .unwrap();
            rows.bind_each(3, ValueRef::Blob(&blob)).unwrap();
            for (i, t) in texts.iter().enumerate() {
                // A buffer that lives only for its row: copied.
                let scratch = format!("scratch-{i}");
                rows.execute([
                    Ok((1, Bound::Kept(ValueRef::Text(t.as_bytes())))),
                    Ok((2, Bound::Kept(ValueRef::Integer(i as i64)))),
                    Ok((5, Bound::Row(ValueRef::Text(scratch.as_bytes())))),
                ])
                .unwrap();
            }
        }
        drop(ins);
        let got = rows_of(&conn, "SELECT a, b, c, d, e FROM t ORDER BY a");
        assert_eq!(got.len(), 6);
        assert_eq!(
            got[5],
            [
                Value::Text("f1-row-2".into()),
                Value::Integer(2),
                Value::Blob(vec![1, 1, 1]),
                Value::Text("file-1".into()),
                Value::Text("scratch-2".into()),
            ]
        );
        // Nothing stays bound after a file: a row of a new file that binds only some
        // parameters has NULL in the others.
        let mut ins =
            RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)").unwrap();
        {
            let mut rows = ins.rows();
            rows.execute(row([ValueRef::Text(b"x"), ValueRef::Integer(9)]))
                .unwrap();
        }
        ins.rows().execute(row([ValueRef::Text(b"y")])).unwrap();
        let got = rows_of(&conn, "SELECT b, c, d FROM t WHERE a = 'y'");
        assert_eq!(got, [[Value::Null, Value::Null, Value::Null]]);
    }

    #[test]
    fn rows_go_in_whole_groups_then_one_by_one_with_shared_values_in_every_row() {
        use rusqlite::types::Value;
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER, f TEXT)")
            .unwrap();
        let sql = |rows: usize| {
            let one = |r: usize| format!("(?{}, ?{}, ?{})", 3 * r + 1, 3 * r + 2, 3 * r + 3);
            let values: Vec<String> = (0..rows).map(one).collect();
            format!("INSERT INTO t VALUES {}", values.join(", "))
        };
        let mut ins = GroupInsert::prepare(&conn, 3, sql).unwrap();
        assert_eq!(ins.group, GROUP_ROWS);
        // Two whole groups and 6 rows more, then a file smaller than a group.
        for (file, n) in [("f0", 2 * GROUP_ROWS + 6), ("f1", 5)] {
            let texts: Vec<String> = (0..n).map(|i| format!("{file}-{i}")).collect();
            let mut rows = ins.rows(n);
            rows.bind_each(3, ValueRef::Text(file.as_bytes())).unwrap();
            for (i, t) in texts.iter().enumerate() {
                let scratch = i as i64 * 10;
                rows.execute([
                    Ok((1, Bound::Kept(ValueRef::Text(t.as_bytes())))),
                    Ok((2, Bound::Row(ValueRef::Integer(scratch)))),
                ])
                .unwrap();
            }
        }
        drop(ins);
        let got = rows_of(&conn, "SELECT a, b, f FROM t ORDER BY rowid");
        assert_eq!(got.len(), 2 * GROUP_ROWS + 6 + 5);
        let want = |file: &str, i: usize| {
            vec![
                Value::Text(format!("{file}-{i}")),
                Value::Integer(i as i64 * 10),
                Value::Text(file.into()),
            ]
        };
        let mut expected: Vec<Vec<Value>> =
            (0..2 * GROUP_ROWS + 6).map(|i| want("f0", i)).collect();
        expected.extend((0..5).map(|i| want("f1", i)));
        assert_eq!(got, expected);
    }

    #[test]
    fn a_group_has_no_more_parameters_than_the_connection_allows() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        // SAFETY: the connection is live; this lowers its own limit.
        unsafe { ffi::sqlite3_limit(conn.handle(), ffi::SQLITE_LIMIT_VARIABLE_NUMBER, 100) };
        assert_eq!(group_rows(&conn, 20), 5);
        assert_eq!(group_rows(&conn, 3), GROUP_ROWS);
        assert_eq!(group_rows(&conn, 200), 1);
    }

    #[test]
    fn a_failed_row_names_sqlite_s_reason_and_the_statement_goes_on() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
            .unwrap();
        let mut ins = RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2)").unwrap();
        let mut rows = ins.rows();
        rows.execute(row([ValueRef::Text(b"a"), ValueRef::Integer(1)]))
            .unwrap();
        let e = rows
            .execute(row([ValueRef::Text(b"a"), ValueRef::Integer(2)]))
            .unwrap_err();
        assert!(e.contains("UNIQUE constraint failed: t.k"), "{e}");
        let e = rows
            .execute(row([ValueRef::Text(b"b"), ValueRef::Null]))
            .unwrap_err();
        assert!(e.contains("NOT NULL constraint failed: t.v"), "{e}");
        rows.execute(row([ValueRef::Text(b"c"), ValueRef::Integer(3)]))
            .unwrap();
        drop(rows);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        assert!(
            RowInsert::prepare(&conn, "INSERT INTO nowhere VALUES (1)")
                .err()
                .unwrap()
                .contains("no such table: nowhere")
        );
    }

    #[test]
    fn a_value_that_cannot_be_read_stops_its_row_with_the_reason_and_inserts_nothing() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a TEXT, b INTEGER)")
            .unwrap();
        let mut ins = RowInsert::prepare(&conn, "INSERT INTO t VALUES (?1, ?2)").unwrap();
        let mut rows = ins.rows();
        let e = rows
            .execute([
                Ok((1, Bound::Kept(ValueRef::Text(b"x")))),
                Err("unsupported column type".into()),
            ])
            .unwrap_err();
        assert_eq!(e, "unsupported column type");
        rows.execute(row([ValueRef::Text(b"y"), ValueRef::Integer(1)]))
            .unwrap();
        drop(rows);
        let got = rows_of(&conn, "SELECT a, b FROM t");
        assert_eq!(
            got,
            [[
                rusqlite::types::Value::Text("y".into()),
                rusqlite::types::Value::Integer(1)
            ]]
        );
    }
}
