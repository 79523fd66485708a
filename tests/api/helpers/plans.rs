//! Reading the plans PostgreSQL explains (`EXPLAIN (ANALYZE, FORMAT JSON)`).

use serde_json::Value;

/// The rows every scan node of `table` in a PostgreSQL plan produced or threw away.
pub fn rows_touched(node: &Value, table: &str) -> u64 {
    let count = |field: &str| node[field].as_f64().unwrap_or(0.0);
    let own = match node["Relation Name"].as_str() == Some(table) {
        true => {
            count("Actual Rows") * count("Actual Loops").max(1.0)
                + count("Rows Removed by Filter")
                + count("Rows Removed by Index Recheck")
        }
        false => 0.0,
    };
    let below: u64 = node["Plans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|child| rows_touched(child, table))
        .sum();
    own as u64 + below
}
