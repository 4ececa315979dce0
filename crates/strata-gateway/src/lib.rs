//! The gateway role (`strata serve --role gateway`): one address in front of many api
//! instances. See ARCHITECTURE.md, Gateway.

pub mod balance;
pub mod upstream;
