//! cairn's golden repositories and the test fixtures shared by the engine
//! and CLI suites: deterministic source trees ([`fixture`]), a tree
//! comparison that says whether a restore is bit-exact ([`compare`]), the
//! writer of `testdata/repos` ([`repos`]), and the fast test repositories
//! every suite creates ([`testkit`]).

pub mod compare;
pub mod fixture;
pub mod repos;
pub mod testkit;

pub use compare::{assert_same_tree, compare_trees, CompareOptions};
pub use fixture::{golden_tree, golden_update, rich_tree, RichOptions};
