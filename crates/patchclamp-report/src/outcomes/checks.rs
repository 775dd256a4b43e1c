//! A reproduction's pass/fail checks, as summary lines and as the page's table.

use patchclamp_lab::steering::battery::Check;

use crate::html::esc;

/// One line per check: `PASS name: value (needs rule)`, the value with `digits` decimals.
pub fn check_lines(checks: &[Check], digits: usize) -> Vec<String> {
    checks
        .iter()
        .map(|c| {
            format!(
                "{} {}: {:.digits$} (needs {})",
                if c.pass { "PASS" } else { "FAIL" },
                c.name,
                c.value,
                c.rule
            )
        })
        .collect()
}

/// The checks as an HTML table, values with `digits` decimals.
pub fn checks_table(checks: &[Check], digits: usize) -> String {
    let mut t = String::from(
        "<h2>Checks</h2><table><tr><th>check</th><th>value</th><th>needs</th><th></th></tr>",
    );
    for c in checks {
        t.push_str(&format!(
            "<tr><td>{}</td><td>{:.digits$}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.name),
            c.value,
            esc(&c.rule),
            if c.pass { "pass" } else { "<b>fail</b>" }
        ));
    }
    t.push_str("</table>");
    t
}
