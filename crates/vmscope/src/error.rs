//! What every module may import to print errors: [`ErrorChain`].
//!
//! Reads nothing and emits text only; imports nothing of the agent, so
//! domain modules (alert, store, owners) need not import the pipeline (or
//! each other) to log an error with its causes.

/// Prints an error with its sources: `reading /proc/1/stat: No such file`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("reading /proc/1/stat")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_source_after_a_colon() {
        let e = Outer(std::io::Error::other("No such file"));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "reading /proc/1/stat: No such file"
        );
        let bare = std::io::Error::other("alone");
        assert_eq!(ErrorChain(&bare).to_string(), "alone");
    }
}
