-- one row per head of an imported ranking (`attnwh heads import`): its score, and its rank (1 = best;
-- ties to the lower layer, then head, as head_ranking orders an extraction run's heads)
select
    run_id,
    layer,
    head,
    score,
    row_number() over (order by score desc nulls last, layer, head) as rank
from imported_rankings
where run_id = $run_id
order by rank
