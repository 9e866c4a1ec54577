//! The functions and syntax planners expressions may use: DataFusion's scalar functions (string,
//! regex, unicode, date/time, core), without tables, aggregates or windows.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow::datatypes::DataType;
use datafusion_common::config::ConfigOptions;
use datafusion_common::{Result, TableReference, plan_err};
use datafusion_expr::planner::{ContextProvider, ExprPlanner};
use datafusion_expr::{AggregateUDF, HigherOrderUDF, ScalarUDF, TableSource, WindowUDF};

/// Scalar functions by name and alias, and the planners for `EXTRACT`, `SUBSTRING`, `POSITION`
/// and friends. Built once per process.
pub(crate) struct Functions {
    by_name: HashMap<String, Arc<ScalarUDF>>,
    planners: Vec<Arc<dyn ExprPlanner>>,
    options: ConfigOptions,
}

pub(crate) fn functions() -> &'static Functions {
    static F: OnceLock<Functions> = OnceLock::new();
    F.get_or_init(|| {
        let mut by_name = HashMap::new();
        for f in datafusion_functions::all_default_functions() {
            for alias in f.aliases() {
                by_name.insert(alias.clone(), f.clone());
            }
            by_name.insert(f.name().to_string(), f);
        }
        Functions {
            by_name,
            planners: vec![
                Arc::new(datafusion_functions::core::planner::CoreFunctionPlanner::default()),
                Arc::new(datafusion_functions::unicode::planner::UnicodeFunctionPlanner),
                Arc::new(datafusion_functions::datetime::planner::DatetimeFunctionPlanner),
            ],
            options: ConfigOptions::default(),
        }
    })
}

impl ContextProvider for Functions {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        plan_err!("an expression cannot read a table ({name})")
    }
    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        &self.planners
    }
    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.by_name.get(name).cloned()
    }
    fn get_higher_order_meta(&self, _name: &str) -> Option<Arc<HigherOrderUDF>> {
        None
    }
    fn get_aggregate_meta(&self, _name: &str) -> Option<Arc<AggregateUDF>> {
        None
    }
    fn get_window_meta(&self, _name: &str) -> Option<Arc<WindowUDF>> {
        None
    }
    fn get_variable_type(&self, _names: &[String]) -> Option<DataType> {
        None
    }
    fn options(&self) -> &ConfigOptions {
        &self.options
    }
    fn udf_names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }
    fn higher_order_function_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udaf_names(&self) -> Vec<String> {
        Vec::new()
    }
    fn udwf_names(&self) -> Vec<String> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_functions_are_registered() {
        let f = functions();
        for name in [
            "lower",
            "upper",
            "trim",
            "substr",
            "concat",
            "replace",
            "regexp_replace",
            "split_part",
            "length",
            "date_trunc",
            "date_part",
            "to_timestamp",
            "coalesce",
            "nullif",
        ] {
            assert!(f.get_function_meta(name).is_some(), "{name}");
        }
        assert!(f.get_function_meta("sum").is_none());
    }
}
