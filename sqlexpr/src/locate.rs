//! Where in an expression an error is: the parser's own location, DataFusion's diagnostic span,
//! or else the innermost sub-expression that fails on its own.

use std::fmt;
use std::ops::ControlFlow;

use datafusion_sql::sqlparser::ast::{Expr as SqlExpr, Spanned, visit_expressions};
use datafusion_sql::sqlparser::tokenizer::Span;

/// A 1-based position in the expression's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line <= 1 {
            write!(f, "column {}", self.column)
        } else {
            write!(f, "line {}, column {}", self.line, self.column)
        }
    }
}

impl Position {
    pub(crate) fn of_span(s: Span) -> Option<Position> {
        (s.start.line > 0).then_some(Position {
            line: s.start.line,
            column: s.start.column,
        })
    }

    /// Just past the last character of `text` (where an expression ended too early).
    pub(crate) fn end_of(text: &str) -> Position {
        let last = text.lines().last().unwrap_or("");
        Position {
            line: text.lines().count().max(1) as u64,
            column: last.chars().count() as u64 + 1,
        }
    }

    /// The location sqlparser writes into its messages: `… at Line: 1, Column: 12`.
    pub(crate) fn from_parser_message(msg: &str) -> Option<Position> {
        let rest = &msg[msg.rfind("Line: ")? + 6..];
        let (line, rest) = rest.split_once(", Column: ")?;
        let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Some(Position {
            line: line.trim().parse().ok()?,
            column: column.parse().ok()?,
        })
    }
}

/// How much text a span covers, to order sub-expressions from the innermost out.
fn extent(s: Span) -> (u64, u64) {
    (
        s.end.line.saturating_sub(s.start.line),
        if s.end.line == s.start.line {
            s.end.column.saturating_sub(s.start.column)
        } else {
            s.end.column
        },
    )
}

/// The start of the smallest sub-expression of `expr` (itself included) for which `fails` holds.
pub(crate) fn innermost_failing(
    expr: &SqlExpr,
    mut fails: impl FnMut(&SqlExpr) -> bool,
) -> Option<Position> {
    let mut subs: Vec<(Span, SqlExpr)> = Vec::new();
    let _ = visit_expressions(expr, |e: &SqlExpr| {
        subs.push((e.span(), e.clone()));
        ControlFlow::<()>::Continue(())
    });
    subs.retain(|(s, _)| s.start.line > 0);
    subs.sort_by_key(|(s, _)| extent(*s));
    subs.into_iter()
        .find(|(_, e)| fails(e))
        .and_then(|(s, _)| Position::of_span(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion_sql::sqlparser::dialect::GenericDialect;
    use datafusion_sql::sqlparser::parser::Parser;

    fn parse(sql: &str) -> SqlExpr {
        Parser::new(&GenericDialect {})
            .try_with_sql(sql)
            .unwrap()
            .parse_expr()
            .unwrap()
    }

    #[test]
    fn parser_messages_give_their_location() {
        let p = Position::from_parser_message(
            "sql parser error: Expected: an expression, found: EOF at Line: 2, Column: 7",
        );
        assert_eq!(p, Some(Position { line: 2, column: 7 }));
        assert_eq!(p.unwrap().to_string(), "line 2, column 7");
        assert_eq!(Position::from_parser_message("no location"), None);
    }

    #[test]
    fn the_innermost_failing_sub_expression_is_found() {
        let e = parse("a + lower(b || nope) * 2");
        let p = innermost_failing(&e, |s| s.to_string().contains("nope"));
        assert_eq!(
            p,
            Some(Position {
                line: 1,
                column: 16
            })
        );
        assert_eq!(p.unwrap().to_string(), "column 16");
        assert_eq!(innermost_failing(&e, |_| false), None);
    }
}
