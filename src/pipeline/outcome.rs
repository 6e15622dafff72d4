//! What happened to a message at a stage, as a type: what a stage counts its
//! items under (see [`super::Observer::count`]).

/// A stage's outcomes: a small fixed set, each with one string form.
///
/// Per-item stages return one from [`super::Transform::apply`]; sinks give one
/// per message through [`super::Settle::outcome`]. `ALL` lets a caller
/// zero-initialise its metrics for every value.
/// The crate-internal `outcome_enum!` macro defines one.
pub trait Outcome: Copy + PartialEq + Send + Sync + 'static {
    /// Every value, in a fixed order.
    const ALL: &'static [Self];
    /// The label value.
    fn as_str(self) -> &'static str;
}

/// Defines a fieldless enum whose every variant has one string form, with
/// inherent `ALL` (every variant, in declaration order, so it cannot miss
/// one) and `as_str`:
///
/// ```text
/// label_enum! {
///     /// Docs.
///     pub enum Colour {
///         /// Docs.
///         Red => "red",
///     }
/// }
/// ```
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $label:expr),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            $vis const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The one string form.
            $vis const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $label),+
                }
            }
        }
    };
}
pub(crate) use label_enum;

/// [`label_enum!`], and the enum is an [`Outcome`].
macro_rules! outcome_enum {
    (@impl $(#[$meta:meta])* $vis:vis enum $name:ident $body:tt) => {
        impl $crate::pipeline::Outcome for $name {
            const ALL: &'static [Self] = $name::ALL;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }
    };
    ($($enum:tt)+) => {
        $crate::pipeline::outcome::label_enum! { $($enum)+ }
        $crate::pipeline::outcome::outcome_enum!(@impl $($enum)+);
    };
}
pub(crate) use outcome_enum;

outcome_enum! {
    /// A source's only outcome: a message was delivered.
    pub enum SourceOutcome {
        /// Delivered by the broker.
        Received => "received",
    }
}

outcome_enum! {
    /// The batch stage's only outcome: a message left in a batch.
    pub enum BatchOutcome {
        /// Left in a batch.
        Out => "out",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    label_enum! {
        /// Three.
        enum Three {
            /// One.
            A => "a",
            /// Two.
            B => "b",
            /// Three.
            C => "c",
        }
    }

    #[test]
    fn all_lists_every_variant_in_order_with_its_string() {
        let strings: Vec<&str> = Three::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(strings, ["a", "b", "c"]);
        assert_eq!(<SourceOutcome as Outcome>::ALL, [SourceOutcome::Received]);
        assert_eq!(Outcome::as_str(BatchOutcome::Out), "out");
    }
}
