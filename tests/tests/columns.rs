//! Typed, locale-aware columns end to end (issue 9): a German point-of-sale export with `;`,
//! decimal commas, thousands dots, an empty discount that defaults to 0, 32-bit quantities and
//! Europe/Berlin wall times on both sides of the DST switches; then the same table with the
//! quantity widened to int64 in a later run.

use std::path::Path;

use tributary_tests::*;

const PIPELINE: &str = r#"
[pipeline]
name = "kasse"
[source]
location = "in"
glob = "*.csv"
format = "csv"
[source.csv]
delimiter = ";"
[[columns]]
name = "receipt"
path = "Bon_Nr"
type = "string"
required = true
[[columns]]
name = "quantity"
path = "Menge"
type = "int32"
[[columns]]
name = "unit_price"
path = "Preis"
type = "decimal(12,2)"
decimal_separator = ","
thousands_separator = "."
[[columns]]
name = "discount"
path = "Rabatt"
type = "decimal(12,2)"
decimal_separator = ","
default = "0"
[[columns]]
name = "sold_at"
path = "Zeit"
type = "timestamp"
format = "%d.%m.%Y %H:%M"
timezone = "Europe/Berlin"
on_ambiguous = "earliest"
[[columns]]
name = "note"
path = "Hinweis"
type = "string"
null_values = ["", "-"]
[output]
columns = ["receipt", "quantity", "unit_price", "discount", "sold_at", "note"]
[load]
merge_keys = ["receipt"]
"#;

const SQL: &str = "SELECT receipt || '|' || quantity || '|' || printf('%.2f', unit_price) || '|' || \
                   printf('%.2f', discount) || '|' || substr(sold_at, 1, 16) || '|' || coalesce(note, 'NULL') AS r FROM kasse ORDER BY receipt";

fn rows(data: &Path) -> Vec<String> {
    table(data, SQL)
        .lines()
        .skip(2)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('('))
        .collect()
}

/// Every quarantine file of the data dir, concatenated.
fn quarantine_text(data: &Path) -> String {
    files_under(&data.join("files"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("quarantine"))
        .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
        .collect()
}

fn run(p: &Path, data: &Path) -> serde_json::Value {
    stats(&ok(&run_pipeline(p, data, &[], None)))
}

#[test]
fn a_german_pos_export_is_read_with_its_locale_defaults_and_nulls() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(
        dir.path().join("in/tag1.csv"),
        "Bon_Nr;Menge;Preis;Rabatt;Zeit;Hinweis\n\
         1;2;1.234,50;;28.03.2026 23:30;-\n\
         2;1;0,99;0,10;25.10.2026 02:30;Gutschein\n\
         3;x;1,00;;01.07.2026 12:00;\n\
         4;99999999999;1,00;;29.03.2026 02:30;\n",
    )
    .unwrap();
    let p = dir.path().join("kasse.toml");
    std::fs::write(&p, PIPELINE).unwrap();
    let data = dir.path().join("data");
    let s = run(&p, &data);
    assert_eq!(s["rows_out"], 2, "{s}");
    assert_eq!(s["invalid_value"], 2, "x and a quantity past int32: {s}");
    assert_eq!(
        rows(&data),
        [
            "1|2|1234.50|0.00|2026-03-28 22:30|NULL",
            "2|1|0.99|0.10|2026-10-25 00:30|Gutschein"
        ]
    );

    // A later run declares the quantity int64 and brings a value past int32: both runs' rows
    // are in the table. Receipt 4 now fits, but its time is in the spring DST gap: rejected.
    std::fs::write(
        dir.path().join("in/tag2.csv"),
        "Bon_Nr;Menge;Preis;Rabatt;Zeit;Hinweis\n5;3000000000;2,00;;01.07.2026 12:00;\n",
    )
    .unwrap();
    std::fs::write(&p, PIPELINE.replace("type = \"int32\"", "type = \"int64\"")).unwrap();
    let s = run(&p, &data);
    assert_eq!(s["rows_out"], 3, "both files under int64: {s}");
    assert_eq!(s["invalid_value"], 2, "x, and 02:30 on 29 March: {s}");
    assert_eq!(
        rows(&data),
        [
            "1|2|1234.50|0.00|2026-03-28 22:30|NULL",
            "2|1|0.99|0.10|2026-10-25 00:30|Gutschein",
            "5|3000000000|2.00|0.00|2026-07-01 10:00|NULL"
        ]
    );
    let q = quarantine_text(&data);
    assert!(q.contains("nonexistent in Europe/Berlin"), "{q}");
}

/// The export's business rules as expressions: a line total, vouchers dropped, bad quantities
/// rejected with a reason, and a row whose CAST fails quarantined alone.
#[test]
fn pos_business_rules_are_sql_expressions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(
        dir.path().join("in/tag1.csv"),
        "Bon_Nr;Menge;Preis;Rabatt;Zeit;Hinweis\n\
         1;2;1.234,50;;28.03.2026 23:30;-\n\
         2;1;0,99;0,10;25.10.2026 02:30;Gutschein\n\
         3;0;1,00;;01.07.2026 12:00;\n\
         4;3;1,00;;01.07.2026 12:00;zwei\n\
         5;3;2,00;0,50;01.07.2026 12:00;7\n",
    )
    .unwrap();
    let rules = r#"
[[steps]]
op = "derive"
column = "line_total"
expr = "quantity * unit_price - COALESCE(discount, 0)"
[[steps]]
op = "filter"
drop_where = "note ILIKE 'gutschein%'"
bucket = "vouchers"
[[steps]]
op = "reject"
where = "quantity <= 0"
bucket = "bad_quantity"
reason = "a sale needs a positive quantity"
[[steps]]
op = "derive"
column = "note_number"
expr = "CAST(note AS INT)"
bucket = "bad_note"
[output]
columns = ["receipt", "line_total", "note_number"]
"#;
    let text = PIPELINE.replace(
        "[output]\ncolumns = [\"receipt\", \"quantity\", \"unit_price\", \"discount\", \"sold_at\", \"note\"]\n",
        rules,
    );
    assert!(text.contains("line_total"), "the rules were spliced in");
    let p = dir.path().join("kasse.toml");
    std::fs::write(&p, text).unwrap();
    let data = dir.path().join("data");
    let s = run(&p, &data);
    assert_eq!(s["rows_out"], 2, "{s}");
    assert_eq!(s["vouchers"], 1, "{s}");
    assert_eq!(s["bad_quantity"], 1, "{s}");
    assert_eq!(s["bad_note"], 1, "'zwei' is not an int: {s}");
    let got = table(
        &data,
        "SELECT receipt || '|' || printf('%.2f', line_total) || '|' || coalesce(note_number, 'NULL') AS r FROM kasse ORDER BY receipt",
    );
    assert!(got.contains("1|2469.00|NULL"), "{got}");
    assert!(got.contains("5|5.50|7"), "{got}");
    let q = quarantine_text(&data);
    assert!(q.contains("a sale needs a positive quantity"), "{q}");
    assert!(q.contains("zwei"), "{q}");
}

/// A `json` column from CSV: valid JSON text is kept and queryable with SQLite's JSON functions,
/// anything else is an invalid value with its reason.
#[test]
fn json_columns_load_and_bad_json_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(
        dir.path().join("in/a.csv"),
        "id;attrs\n1;\"{\"\"tier\"\": \"\"gold\"\", \"\"n\"\": [1,2]}\"\n2;{oops\n3;\n",
    )
    .unwrap();
    let p = dir.path().join("j.toml");
    std::fs::write(
        &p,
        "[pipeline]\nname = \"j\"\n[source]\nlocation = \"in\"\nglob = \"*.csv\"\nformat = \"csv\"\n\
         [source.csv]\ndelimiter = \";\"\n[[columns]]\nname = \"id\"\ntype = \"string\"\n\
         [[columns]]\nname = \"attrs\"\ntype = \"json\"\n[output]\ncolumns = [\"id\", \"attrs\"]\n\
         [load]\nmerge_keys = [\"id\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let s = run(&p, &data);
    assert_eq!(
        (&s["rows_out"], &s["invalid_value"]),
        (&2.into(), &1.into()),
        "{s}"
    );
    let got = table(
        &data,
        "SELECT id || '|' || coalesce(json_extract(attrs, '$.tier'), 'NULL') || '|' || coalesce(json_array_length(attrs, '$.n'), 'NULL') AS r FROM j ORDER BY id",
    );
    assert!(
        got.contains("1|gold|2") && got.contains("3|NULL|NULL"),
        "{got}"
    );
    let q = quarantine_text(&data);
    assert!(q.contains("expected json"), "{q}");
}

/// The shipped POS example (`examples/pos/kasse.toml`) runs as documented: vouchers filtered,
/// a zero quantity and a time in the spring DST gap quarantined, a re-sent line deduplicated,
/// exact line totals, the Berlin sale day as the partition, hashed e-mails, expectations passed.
#[test]
fn the_shipped_pos_example_runs_as_documented() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pos/kasse.toml");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(coordinator_bin())
        .args([
            "run",
            example.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--no-progress",
        ])
        .env("KASSE_EMAIL_SALT", "test-salt")
        .output()
        .unwrap();
    let stdout = ok(&out);
    let s = stats(&stdout);
    assert_eq!(
        (
            &s["lines_total"],
            &s["vouchers"],
            &s["bad_quantity"],
            &s["invalid_value"],
            &s["duplicates"],
            &s["rows_out"]
        ),
        (
            &8.into(),
            &1.into(),
            &1.into(),
            &1.into(),
            &1.into(),
            &4.into()
        ),
        "{s}"
    );
    assert_eq!(quality(&stdout)["passed"], true, "{stdout}");
    let got = table(
        &data,
        "SELECT line_key || '|' || printf('%.2f', line_total) || '|' || sale_day || '|' || substr(sold_at, 1, 16) || '|' || coalesce(length(customer_hash), 0) AS r FROM kasse_lines ORDER BY line_key",
    );
    for want in [
        "1001-1|7.00|2026-03-28|2026-03-28 22:30|64",
        "1001-2|1200.00|2026-03-28|2026-03-28 22:30|64",
        "2001-1|3.00|2026-10-25|2026-10-25 00:30|64",
    ] {
        assert!(got.contains(want), "{want} in\n{got}");
    }
    assert!(
        got.contains("2002-1|6.87|2026-10-25|2026-10-25 02:10|0"),
        "no e-mail: {got}"
    );
    // A decimal column reads back with its scale; a sum of decimals prints as the decimal it is.
    let totals = table(
        &data,
        "SELECT line_total FROM kasse_lines ORDER BY line_key",
    );
    let totals: Vec<&str> = totals.lines().skip(2).take(4).map(str::trim).collect();
    assert_eq!(totals, ["7.00", "1200.00", "3.00", "6.87"]);
    let sum = table(&data, "SELECT sum(line_total) AS s FROM kasse_lines");
    assert_eq!(sum.lines().nth(2).map(str::trim), Some("1216.87"), "{sum}");
    let q = quarantine_text(&data);
    assert!(
        q.contains("a sale needs a positive quantity")
            && q.contains("nonexistent in Europe/Berlin"),
        "{q}"
    );
}

const EVOLVING: &str = r#"
[pipeline]
name = "signups"
[source]
location = "in"
format = "ndjson"
[[columns]]
name = "id"
type = "string"
required = true
[output]
columns = ["id"]
[load]
merge_keys = ["id"]
[schema]
on_new_column = "evolve"
"#;

/// `[schema] on_new_column = "evolve"` end to end: undeclared fields become table columns;
/// a later run's new fields are added, and a field whose inferred type changes between files
/// and runs (an integer, then a string) keeps its values' text, with nothing refused or lost.
#[test]
fn evolved_fields_become_columns_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(
        dir.path().join("in/a.ndjson"),
        "{\"id\":\"1\",\"n\":5,\"plan\":\"pro\"}\n{\"id\":\"2\",\"n\":7}\n",
    )
    .unwrap();
    let p = dir.path().join("signups.toml");
    std::fs::write(&p, EVOLVING).unwrap();
    let data = dir.path().join("data");
    let s = run(&p, &data);
    assert_eq!(s["rows_out"], 2, "{s}");
    let sql = "SELECT id || '|' || coalesce(n, 'NULL') || '|' || coalesce(plan, 'NULL') AS r FROM signups ORDER BY id";
    let got = table(&data, sql);
    assert!(got.contains("1|5|pro") && got.contains("2|7|NULL"), "{got}");

    std::fs::write(
        dir.path().join("in/b.ndjson"),
        "{\"id\":\"3\",\"n\":\"seven\",\"ref\":{\"src\":\"ad\"}}\n",
    )
    .unwrap();
    let s = run(&p, &data);
    assert_eq!(s["rows_out"], 3, "{s}");
    let sql = "SELECT id || '|' || coalesce(n, 'NULL') || '|' || coalesce(plan, 'NULL') || '|' || coalesce(ref, 'NULL') AS r FROM signups ORDER BY id";
    let got = table(&data, sql);
    for want in [
        "1|5|pro|NULL",
        "2|7|NULL|NULL",
        "3|seven|NULL|{\"src\":\"ad\"}",
    ] {
        assert!(got.contains(want), "{want:?} not in {got}");
    }
}

/// Regression (issue 9, item 7): a decimal wider than a double's 15 digits was stored as a REAL
/// in the embedded warehouse, so `1234567890123456.78` read back as `1.23456789012346e+15`.
/// Every value reads back exactly through `coordinator sql`, narrow ones still compare as numbers.
#[test]
fn wide_decimals_are_stored_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("in")).unwrap();
    std::fs::write(
        dir.path().join("in/a.csv"),
        "id,amount,rate\n1,1234567890123456.78,0.000000000000000001\n2,12.5,2.25\n\
         3,-99999999999999999.99,123456789.123456789012345678\n",
    )
    .unwrap();
    let p = dir.path().join("d.toml");
    std::fs::write(
        &p,
        "[pipeline]\nname = \"d\"\n[source]\nlocation = \"in\"\nglob = \"*.csv\"\nformat = \"csv\"\n\
         [[columns]]\nname = \"id\"\ntype = \"int64\"\n\
         [[columns]]\nname = \"amount\"\ntype = \"decimal(20,2)\"\n\
         [[columns]]\nname = \"rate\"\ntype = \"decimal(38,18)\"\n\
         [output]\ncolumns = [\"id\", \"amount\", \"rate\"]\n[load]\nmerge_keys = [\"id\"]\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    assert_eq!(run(&p, &data)["rows_out"], 3);
    let got = table(&data, "SELECT id, amount, rate FROM d ORDER BY id");
    for want in [
        "1234567890123456.78",
        "0.000000000000000001",
        "12.50",
        "2.250000000000000000",
        "-99999999999999999.99",
        "123456789.123456789012345678",
    ] {
        assert!(got.contains(want), "{want} in {got}");
    }
    let narrow = table(&data, "SELECT id FROM d WHERE amount > 10 AND amount < 13");
    assert!(narrow.contains('2'), "{narrow}");
}
