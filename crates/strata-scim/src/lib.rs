//! SCIM 2.0 protocol pieces (RFC 7644) that need no server: the filter grammar
//! (§3.4.2.2) parsed into an AST ([`filter`]), PATCH paths and operations in the forms
//! identity providers send ([`patch`]), and the evaluation of a filter over a JSON resource.
//!
//! Architecture invariant: this crate knows nothing of HTTP, SQL or Strata's domain. It
//! turns text into values and answers questions about JSON; the HTTP layer maps its errors
//! to SCIM error bodies (`scimType`), and stores compile its AST to their own SQL.

pub mod filter;
pub mod patch;

pub use filter::{AttrPath, CompValue, CompareOp, Filter, FilterError, compare_sort_values, parse_filter, sort_value};
pub use patch::{PatchOp, PatchOperation, PatchPath, parse_patch_path, parse_patch_request};
