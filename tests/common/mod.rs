pub mod clients;
pub mod dig;
pub mod dns_server;
pub mod fqdnd;
pub mod hubble;
pub mod netns;
pub mod privileged;
pub mod topology;
