"""The output store: its layout, time entries and done marks (layout), how values and text
are encoded (compact, text, coords), what keeps it sound (integrity: chunk checksums;
soundness: every other array; verify: --verify), one writer at a time (locks), CF and
`geoemb:` attributes (conventions), the STAC catalog beside it (stac), and reading it back
(reading, quicklook)."""
