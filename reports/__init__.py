"""Static, self-contained HTML reports of Altair charts fed by the query library."""
