"""Settlement: end of day, payouts, bank statements, reconciliation and the finance pages.

Modules, in the order money flows through them:

- `end_of_day`: `close_day` (every payable owed at the cut-off into a `Batch`: gross, fees,
  net; a two-phase hold per batch), `pay_day` (first attempt of each batch through a
  `PayoutPort`, e.g. `gateways.snap.client.BankClient`), `export_bulk_csv` (instead of SNAP).
- `statements`: `StatementLine` and the MT940 / CSV importers (`import_file`).
- `matching`: the pure matcher (`match`), its rules and its reasons.
- `reconciliation`: `import_statement`, `expect_collections`, `reconcile` (load, match,
  validate, persist and book, report).
- `actions`: what staff do (`write_off`, `approve_write_off`, `preview_match` and
  `manual_match`, `reinitiate_payout`) and `day_close`.
- `views`, `charts`, `reports`: what people read; `pages`: the finance pages
  (`settlement.pages.install` for `gateways.backoffice.create_app`), in the reader's language
  through `i18n` (templates and catalogs) and `formatting` (rupiah and dates per language).
"""
