pub mod graph;
pub mod publish;
