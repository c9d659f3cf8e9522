pub mod fake_sfn;
