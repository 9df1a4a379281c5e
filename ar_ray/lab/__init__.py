"""The lab wing: what a team around a run uses (trackers, alerts, spend). Imports ledger and types only."""
