-- Every run: what it is, how far it got, how well the model answered, for the report's first page.
select run_id, kind, model, benchmark, architecture, n_layers, n_heads, n_kv_heads, dtype, n_planned, parts_committed, n_parts,
       complete, n_rows, n_errors, n_invalid, round(accuracy, 4) as accuracy, round(circular_accuracy, 4) as circular_accuracy
from run_overview
order by model, benchmark, kind, created, run_id
