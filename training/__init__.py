"""Training loops and the parts they share; docs/architecture.md ("Layout") says what each module holds."""
