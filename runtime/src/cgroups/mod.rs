//! Control groups for containers, v1 and v2, behind one trait.
//!
//! Owned by the cgroups work; see the module contract in `Cgroup`.
