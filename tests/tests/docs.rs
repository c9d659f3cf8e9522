//! The README's configuration table and the code's variables list the same names.

use local_stack::paths::workspace_root;
use sfn_pacer::config::VARIABLES;

/// The variable names in the first column of the README's "## Configuration" table.
fn readme_variables() -> Vec<String> {
    section_variables("\n## Configuration")
}

/// The variable names in the first column of the tables of the README section `heading`.
fn section_variables(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = readme
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("a section {heading:?}"));
    let section = section.split("\n## ").next().unwrap();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_documents_exactly_the_variables_the_code_reads() {
    let documented = readme_variables();
    for v in VARIABLES {
        assert!(
            documented.iter().any(|d| d == v),
            "{v} is read by the code but missing from the README table"
        );
    }
    for d in &documented {
        assert!(
            VARIABLES.contains(&d.as_str()),
            "{d} is in the README table but the code does not read it"
        );
    }
    assert_eq!(documented.len(), VARIABLES.len(), "each variable once: {documented:?}");
}

#[test]
fn the_readme_has_exactly_two_set_up_commands_near_the_top() {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let quick_start = readme.split("\n## Quick start").nth(1).expect("a Quick start section");
    let first_block = quick_start.split("```sh").nth(1).unwrap().split("```").next().unwrap();
    let commands: Vec<&str> = first_block.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert!(commands[0].starts_with("make demo"));
    assert!(commands[1].starts_with("make test"));
    let ci = std::fs::read_to_string(workspace_root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == "make test"),
        ".ci/run must call the README's test command"
    );
}

#[test]
fn the_readme_documents_exactly_the_variables_the_quota_sync_reads() {
    let mut documented = section_variables("\n## The account's quota");
    documented.sort();
    let mut read: Vec<String> = quota_sync::config::VARIABLES.iter().map(|v| v.to_string()).collect();
    read.sort();
    assert_eq!(documented, read);
}
