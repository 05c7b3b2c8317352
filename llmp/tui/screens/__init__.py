"""The dashboard's screens (one per tab), in tab order; `VIEWS` is read by the app."""
