pub mod netns;
pub mod privileged;
