//! SQL expressions over Arrow batches: `derive`, `filter … drop_where` and `reject … where`.
//!
//! An expression is parsed by sqlparser, planned and type-checked by DataFusion against the
//! columns known at its step, coerced and simplified, and compiled into a physical expression
//! that evaluates a whole batch at once. Everything here is checked when the pipeline file is
//! validated: an unknown column, a type mismatch, a syntax error or a volatile function
//! (`random()`, `now()`: a redone shard must produce the same rows) is refused with its position
//! in the expression.
//!
//! At run time a batch that fails as a whole (a `CAST` of text that is not a number, a division
//! by zero) is evaluated again row by row, so only the rows that fail go to quarantine, each
//! with its reason.

mod column_type;
mod functions;
mod locate;
pub mod types;

use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray};
use arrow::compute::{CastOptions, cast_with_options, concat};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion_common::{DFSchema, DataFusionError};
use datafusion_expr::execution_props::ExecutionProps;
use datafusion_expr::simplify::SimplifyContext;
use datafusion_expr::{Expr, ExprSchemable};
use datafusion_optimizer::simplify_expressions::ExprSimplifier;
use datafusion_physical_expr::PhysicalExpr;
use datafusion_sql::planner::{ParserOptions, PlannerContext, SqlToRel};
use datafusion_sql::sqlparser::ast::Expr as SqlExpr;
use datafusion_sql::sqlparser::dialect::GenericDialect;
use datafusion_sql::sqlparser::parser::Parser;
use datafusion_sql::sqlparser::tokenizer::Token;

pub use locate::Position;

pub use column_type::{ColumnType, TYPE_NAMES};

/// Why an expression was refused, and where in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "at {p} of the expression: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl ExprError {
    fn new(position: Option<Position>, message: impl Into<String>) -> Self {
        ExprError {
            position,
            message: message.into(),
        }
    }
}

/// A compiled expression: its result type, the columns it reads and the vectorised kernel.
#[derive(Clone)]
pub struct Expression {
    pub sql: String,
    /// The column type of the result.
    pub ty: ColumnType,
    /// The columns it reads, in the order [`Expression::evaluate`] takes them.
    pub inputs: Vec<String>,
    schema: SchemaRef,
    physical: Arc<dyn PhysicalExpr>,
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expression")
            .field("sql", &self.sql)
            .field("ty", &self.ty)
            .field("inputs", &self.inputs)
            .finish()
    }
}

/// Rows an evaluation could not handle: (row index, reason).
pub type RowErrors = Vec<(usize, String)>;

/// Compiles `sql` against `columns` (declared ones, then step outputs; a later column of the
/// same name replaces the earlier one).
pub fn compile(sql: &str, columns: &[(String, ColumnType)]) -> Result<Expression, ExprError> {
    let df = visible_schema(columns);
    let parsed = parse(sql)?;
    let expr = plan(parsed.clone(), &df).map_err(|e| {
        let position = diagnostic_position(&e)
            .or_else(|| locate::innermost_failing(&parsed, |sub| plan(sub.clone(), &df).is_err()));
        ExprError::new(position, message(&e))
    })?;
    if expr.is_volatile() {
        return Err(ExprError::new(
            None,
            "volatile functions (random, uuid, …) are refused: a redone shard must produce the same rows",
        ));
    }
    let at_start = || Position::of_span(datafusion_sql::sqlparser::ast::Spanned::span(&parsed));
    let dt = expr
        .get_type(&df)
        .map_err(|e| ExprError::new(at_start(), message(&e)))?;
    let ty = result_type(&dt).map_err(|m| ExprError::new(at_start(), m))?;
    build(sql, ty, expr, &df).map_err(|e| ExprError::new(None, message(&e)))
}

/// Compiles a predicate: like [`compile`], and its result must be a bool.
pub fn compile_predicate(
    sql: &str,
    columns: &[(String, ColumnType)],
) -> Result<Expression, ExprError> {
    let e = compile(sql, columns)?;
    if e.ty != ColumnType::Bool {
        return Err(ExprError::new(
            Some(Position { line: 1, column: 1 }),
            format!(
                "a condition must be true or false, this expression is {}",
                e.ty
            ),
        ));
    }
    Ok(e)
}

fn visible_schema(columns: &[(String, ColumnType)]) -> DFSchema {
    let mut fields: Vec<Field> = Vec::new();
    for (name, ty) in columns {
        let f = Field::new(name, ty.arrow(), true);
        match fields.iter_mut().find(|f| f.name() == name) {
            Some(old) => *old = f,
            None => fields.push(f),
        }
    }
    DFSchema::try_from(Schema::new(fields)).expect("column names are unique")
}

fn parse(sql: &str) -> Result<SqlExpr, ExprError> {
    let perr = |e: &dyn fmt::Display| {
        let m = e.to_string();
        let position = Position::from_parser_message(&m)
            .or_else(|| m.contains("found: EOF").then(|| Position::end_of(sql)));
        ExprError::new(position, m.replace("sql parser error: ", ""))
    };
    let mut parser = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .map_err(|e| perr(&e))?;
    let expr = parser.parse_expr().map_err(|e| perr(&e))?;
    let next = parser.next_token();
    if next.token != Token::EOF {
        return Err(ExprError::new(
            Position::of_span(next.span),
            format!("unexpected {} after the expression", next.token),
        ));
    }
    Ok(expr)
}

/// SQL → a typed, coerced and simplified logical expression.
fn plan(sql: SqlExpr, df: &DFSchema) -> Result<Expr, DataFusionError> {
    let options = ParserOptions::new()
        .with_enable_ident_normalization(false)
        .with_collect_spans(true);
    let planner = SqlToRel::new_with_options(functions::functions(), options);
    let expr = planner.sql_to_expr(sql, df, &mut PlannerContext::new())?;
    let cx = SimplifyContext::builder()
        .with_schema(Arc::new(df.clone()))
        .build();
    let simplifier = ExprSimplifier::new(cx);
    let expr = simplifier.coerce(expr, df)?;
    simplifier.simplify(expr)
}

fn diagnostic_position(e: &DataFusionError) -> Option<Position> {
    let span = e.diagnostic()?.span?;
    (span.start.line > 0).then_some(Position {
        line: span.start.line,
        column: span.start.column,
    })
}

/// DataFusion's message without its error-kind prefixes and bug-report boilerplate.
fn message(e: &DataFusionError) -> String {
    let m = match e.find_root() {
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m)
        | DataFusionError::Internal(m) => m.clone(),
        other => other.to_string(),
    };
    let m = m.replace("Schema error: ", "");
    m.split("\nThis issue was likely caused")
        .next()
        .unwrap_or_default()
        .trim()
        .replace('\n', " ")
}

fn result_type(dt: &DataType) -> Result<ColumnType, String> {
    if *dt == DataType::Null {
        return Err("the expression is always NULL: give it a type with CAST(NULL AS …)".into());
    }
    ColumnType::from_arrow(dt).ok_or_else(|| {
        format!("the expression's type {dt} cannot be stored: CAST it to one of {TYPE_NAMES}")
    })
}

/// The physical expression over a batch of only the columns the expression reads.
fn build(
    sql: &str,
    ty: ColumnType,
    expr: Expr,
    df: &DFSchema,
) -> Result<Expression, DataFusionError> {
    let refs = expr.column_refs();
    let fields: Vec<Field> = df
        .fields()
        .iter()
        .filter(|f| refs.iter().any(|c| c.name == *f.name()))
        .map(|f| f.as_ref().clone())
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let projected = DFSchema::try_from(schema.as_ref().clone())?;
    let physical = datafusion_physical_expr::create_physical_expr(
        &expr,
        &projected,
        &ExecutionProps::new(),
        &Default::default(),
    )?;
    Ok(Expression {
        sql: sql.to_string(),
        ty,
        inputs: schema.fields().iter().map(|f| f.name().clone()).collect(),
        schema,
        physical,
    })
}

impl Expression {
    /// Evaluates over `rows` rows whose input columns are `inputs` (in [`Expression::inputs`]
    /// order). The result has the Arrow type of [`Expression::ty`]; rows that fail are null in it
    /// and listed with their reasons.
    pub fn evaluate(
        &self,
        inputs: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<(ArrayRef, RowErrors), String> {
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), inputs, &options)
            .map_err(|e| format!("expression {:?}: {e}", self.sql))?;
        match self.eval(&batch) {
            Ok(a) => Ok((a, Vec::new())),
            Err(_) => self.row_by_row(&batch),
        }
    }

    /// Evaluates a predicate: true where it holds; false where it is false or null.
    pub fn evaluate_predicate(
        &self,
        inputs: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<(BooleanArray, RowErrors), String> {
        let (a, errors) = self.evaluate(inputs, rows)?;
        let b = a
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or("not a predicate")?;
        let held = match b.nulls() {
            None => b.clone(),
            Some(_) => b.iter().map(|v| Some(v.unwrap_or(false))).collect(),
        };
        Ok((held, errors))
    }

    fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef, String> {
        let value = self
            .physical
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| message(&e))?;
        let want = self.ty.arrow();
        if value.data_type() == &want {
            return Ok(value);
        }
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        cast_with_options(&value, &want, &options).map_err(|e| e.to_string())
    }

    fn row_by_row(&self, batch: &RecordBatch) -> Result<(ArrayRef, RowErrors), String> {
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(batch.num_rows());
        let mut errors = Vec::new();
        for i in 0..batch.num_rows() {
            match self.eval(&batch.slice(i, 1)) {
                Ok(a) => parts.push(a),
                Err(reason) => {
                    errors.push((i, reason));
                    parts.push(arrow::array::new_null_array(&self.ty.arrow(), 1));
                }
            }
        }
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let joined = if refs.is_empty() {
            arrow::array::new_empty_array(&self.ty.arrow())
        } else {
            concat(&refs).map_err(|e| e.to_string())?
        };
        Ok((joined, errors))
    }
}

#[cfg(test)]
mod tests;
