//! Placeholder: the load generator (issue "Performance").
