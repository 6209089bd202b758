//! The ASP.NET Core sample's test page, compiled in so the binary needs no files at run time.

pub const HTML: &str = include_str!("page.html");
