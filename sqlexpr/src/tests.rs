use std::sync::Arc;

use arrow::array::*;
use arrow::util::display::array_value_to_string;
use proptest::prelude::*;

use super::*;

fn pos_columns() -> Vec<(String, ColumnType)> {
    let dec = ColumnType::Decimal {
        precision: 10,
        scale: 2,
    };
    vec![
        ("quantity".into(), ColumnType::Int32),
        ("unit_price".into(), dec),
        ("discount".into(), dec),
        ("name".into(), ColumnType::String),
        ("t".into(), ColumnType::Timestamp),
        ("local".into(), ColumnType::String),
    ]
}

fn decimals(v: &[Option<i128>]) -> ArrayRef {
    Arc::new(
        Decimal128Array::from(v.to_vec())
            .with_precision_and_scale(10, 2)
            .unwrap(),
    )
}

/// Three rows of a point-of-sale export.
fn input(name: &str) -> ArrayRef {
    match name {
        "quantity" => Arc::new(Int32Array::from(vec![Some(3), Some(2), None])),
        "unit_price" => decimals(&[Some(1999), Some(500), Some(100)]),
        "discount" => decimals(&[None, Some(50), Some(0)]),
        "name" => Arc::new(StringArray::from(vec![
            Some("Voucher A"),
            Some("bread"),
            None,
        ])),
        "t" => Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(1_711_848_600_000_000),
                Some(1_719_835_200_000_000),
                None,
            ])
            .with_timezone("UTC"),
        ),
        "local" => Arc::new(StringArray::from(vec![
            Some("2024-03-31 01:30:00"),
            Some("2024-07-01 12:00:00"),
            Some("2024-10-27 02:30:00"),
        ])),
        other => panic!("no input {other}"),
    }
}

/// Evaluates `sql` on the three rows and renders each value ("" for null).
fn eval(sql: &str) -> (ColumnType, Vec<String>) {
    let e = compile(sql, &pos_columns()).unwrap_or_else(|err| panic!("{sql}: {err}"));
    let cols = e.inputs.iter().map(|n| input(n)).collect();
    let (a, errors) = e.evaluate(cols, 3).unwrap();
    assert!(errors.is_empty(), "{sql}: {errors:?}");
    let shown = (0..a.len())
        .map(|i| {
            if a.is_null(i) {
                String::new()
            } else {
                array_value_to_string(&a, i).unwrap()
            }
        })
        .collect();
    (e.ty, shown)
}

fn values(sql: &str) -> Vec<String> {
    eval(sql).1
}

#[test]
fn a_line_total_is_exact_decimal_arithmetic() {
    let (ty, v) = eval("quantity * unit_price - COALESCE(discount, 0)");
    assert!(matches!(ty, ColumnType::Decimal { scale: 2, .. }), "{ty}");
    assert_eq!(v, ["59.97", "9.50", ""]);
}

#[test]
fn comparisons_and_logic() {
    assert_eq!(values("quantity > 2"), ["true", "false", ""]);
    assert_eq!(
        values("name IS NOT NULL AND NOT (quantity < 1)"),
        ["true", "true", "false"]
    );
    assert_eq!(values("quantity IN (1, 2)"), ["false", "true", ""]);
    assert_eq!(
        values("name IS NULL OR quantity = 3"),
        ["true", "false", "true"]
    );
}

#[test]
fn patterns_case_and_null_handling() {
    assert_eq!(values("name LIKE 'Vou%'"), ["true", "false", ""]);
    assert_eq!(values("name ILIKE 'voucher%'"), ["true", "false", ""]);
    assert_eq!(
        values(
            "CASE WHEN quantity > 2 THEN 'big' WHEN quantity IS NULL THEN 'none' ELSE 'small' END"
        ),
        ["big", "small", "none"]
    );
    assert_eq!(
        values("COALESCE(name, 'unknown')"),
        ["Voucher A", "bread", "unknown"]
    );
    assert_eq!(values("NULLIF(quantity, 3)"), ["", "2", ""]);
}

#[test]
fn casts() {
    assert_eq!(values("CAST(quantity AS VARCHAR)"), ["3", "2", ""]);
    assert_eq!(values("TRY_CAST(name AS INT)"), ["", "", ""]);
    // Decimals round half away from zero, as DuckDB and PostgreSQL do.
    assert_eq!(values("CAST('1.005' AS DECIMAL(10,2))")[0], "1.01");
    assert_eq!(values("CAST('-1.005' AS DECIMAL(10,2))")[0], "-1.01");
    assert_eq!(eval("CAST(quantity AS BIGINT)").0, ColumnType::Int64);
}

#[test]
fn string_functions() {
    assert_eq!(values("lower(name)"), ["voucher a", "bread", ""]);
    assert_eq!(values("upper(name)"), ["VOUCHER A", "BREAD", ""]);
    assert_eq!(values("trim('  x ')")[0], "x");
    assert_eq!(values("substr(name, 2, 3)"), ["ouc", "rea", ""]);
    assert_eq!(values("concat(name, '!')"), ["Voucher A!", "bread!", "!"]);
    assert_eq!(values("name || '-' || upper(name)")[1], "bread-BREAD");
    assert_eq!(values("replace(name, 'a', 'o')")[1], "breod");
    assert_eq!(
        values("regexp_replace(name, '[aeiou]', '_', 'g')")[1],
        "br__d"
    );
    assert_eq!(values("split_part(name, ' ', 2)")[0], "A");
    assert_eq!(values("length(name)"), ["9", "5", ""]);
}

#[test]
fn date_and_time_functions() {
    assert_eq!(values("CAST(t AS DATE)"), ["2024-03-31", "2024-07-01", ""]);
    assert_eq!(values("extract(hour FROM t)"), ["1", "12", ""]);
    assert_eq!(values("date_part('year', t)")[0], "2024");
    assert_eq!(eval("date_trunc('day', t)").0, ColumnType::Timestamp);
    assert_eq!(values("date_trunc('day', t)")[0], "2024-03-31T00:00:00Z");
    assert_eq!(
        values("to_timestamp(local, '%Y-%m-%d %H:%M:%S')")[1],
        "2024-07-01T12:00:00Z"
    );
}

#[test]
fn berlin_local_time_to_utc_is_dst_correct() {
    // Winter (UTC+1) and summer (UTC+2); 02:30 on the autumn switch happens twice, so that row
    // fails alone (a column's `timezone` with `on_ambiguous` chooses instead).
    let sql = "to_timestamp(local, '%Y-%m-%d %H:%M:%S') AT TIME ZONE 'Europe/Berlin'";
    let e = compile(sql, &pos_columns()).unwrap();
    let (a, errors) = e.evaluate(vec![input("local")], 3).unwrap();
    assert_eq!(
        array_value_to_string(&a, 0).unwrap(),
        "2024-03-31T00:30:00Z"
    );
    assert_eq!(
        array_value_to_string(&a, 1).unwrap(),
        "2024-07-01T10:00:00Z"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, 2);
    assert!(a.is_null(2));
}

#[test]
fn a_failing_row_is_reported_alone() {
    let cols = vec![("s".to_string(), ColumnType::String)];
    let e = compile("CAST(s AS INT) * 2", &cols).unwrap();
    let (a, errors) = e
        .evaluate(vec![Arc::new(StringArray::from(vec!["1", "x", "3"]))], 3)
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, 1);
    assert!(errors[0].1.contains('x'), "{}", errors[0].1);
    assert!(a.is_null(1));
    assert_eq!(array_value_to_string(&a, 2).unwrap(), "6");
}

#[test]
fn predicates_treat_null_as_false() {
    let e = compile_predicate("quantity > 2", &pos_columns()).unwrap();
    let (b, _) = e.evaluate_predicate(vec![input("quantity")], 3).unwrap();
    assert_eq!(
        b.iter().collect::<Vec<_>>(),
        [Some(true), Some(false), Some(false)]
    );
    let err = compile_predicate("quantity + 1", &pos_columns()).unwrap_err();
    assert!(err.message.contains("true or false"), "{err}");
}

#[test]
fn a_later_column_of_the_same_name_replaces_the_earlier() {
    let mut cols = pos_columns();
    cols.push(("quantity".into(), ColumnType::String));
    assert_eq!(compile("quantity", &cols).unwrap().ty, ColumnType::String);
}

fn refused(sql: &str) -> ExprError {
    compile(sql, &pos_columns()).expect_err(sql)
}

#[test]
fn an_unknown_column_is_refused_at_its_position() {
    let e = refused("quantity * unit_prise");
    assert_eq!(
        e.position,
        Some(Position {
            line: 1,
            column: 12
        }),
        "{e}"
    );
    assert!(e.message.contains("unit_prise"), "{e}");
    assert!(
        e.to_string()
            .starts_with("at column 12 of the expression: "),
        "{e}"
    );
}

#[test]
fn a_type_mismatch_is_refused_at_the_failing_part() {
    let e = refused("lower(name) || (quantity + name)");
    assert_eq!(
        e.position,
        Some(Position {
            line: 1,
            column: 17
        }),
        "{e}"
    );
    assert!(
        e.message.contains("Int32") && e.message.contains("Utf8"),
        "{e}"
    );
}

#[test]
fn syntax_errors_carry_the_parsers_position() {
    let e = refused("quantity +");
    assert_eq!(
        e.position,
        Some(Position {
            line: 1,
            column: 11
        }),
        "{e}"
    );
    let e = refused("quantity 2");
    assert_eq!(
        e.position,
        Some(Position {
            line: 1,
            column: 10
        }),
        "{e}"
    );
    assert!(e.message.contains("unexpected"), "{e}");
}

#[test]
fn unknown_functions_volatility_and_untyped_results_are_refused() {
    assert!(refused("nosuch_fn(quantity)").message.contains("nosuch_fn"));
    assert!(refused("random() > 0.5").message.contains("volatile"));
    assert!(refused("uuid() IS NULL").message.contains("volatile"));
    assert_eq!(values("round(CAST(unit_price AS DOUBLE))")[0], "20.0");
    assert!(refused("NULL").message.contains("CAST(NULL"));
    assert!(refused("sum(quantity)").position.is_some());
}

#[test]
fn names_are_case_sensitive_as_declared() {
    let cols = vec![("Kunde_EMail".to_string(), ColumnType::String)];
    assert!(compile("lower(Kunde_EMail)", &cols).is_ok());
    assert!(compile("lower(kunde_email)", &cols).is_err());
    let cols = vec![("order-id".to_string(), ColumnType::Int64)];
    assert!(compile("\"order-id\" + 1", &cols).is_ok());
}

fn dec(v: i64) -> ArrayRef {
    decimals(&[Some(v as i128)])
}

proptest! {
    /// Sums, differences and products of decimal(10,2) values are exact, as integer arithmetic
    /// on their unscaled values says.
    #[test]
    fn decimal_arithmetic_is_exact(a in -99_999_999i64..99_999_999, b in -99_999_999i64..99_999_999) {
        let cols = vec![
            ("a".to_string(), ColumnType::Decimal { precision: 10, scale: 2 }),
            ("b".to_string(), ColumnType::Decimal { precision: 10, scale: 2 }),
        ];
        for (sql, want_scale, want) in [
            ("a + b", 2, (a + b) as i128),
            ("a - b", 2, (a - b) as i128),
            ("a * b", 4, a as i128 * b as i128),
        ] {
            let e = compile(sql, &cols).unwrap();
            let scale_ok = matches!(e.ty, ColumnType::Decimal { scale, .. } if scale == want_scale);
            prop_assert!(scale_ok, "{} is {}", sql, e.ty);
            let (out, errors) = e.evaluate(vec![dec(a), dec(b)], 1).unwrap();
            prop_assert!(errors.is_empty());
            let d = out.as_any().downcast_ref::<Decimal128Array>().unwrap();
            prop_assert_eq!(d.value(0), want, "{}", sql);
        }
    }
}
