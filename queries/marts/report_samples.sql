-- The first samples of the warehouse with their answers, for the report's samples page.
select model, benchmark, sample_key, status, question, output_text, parsed, gold, correct, error
from stg_samples
order by model, benchmark, sample_idx
limit $max_samples
