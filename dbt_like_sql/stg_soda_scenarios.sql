-- SODA scenarios as used by BIG5-CHAT: the narrative, PersonX (opens the dialogue) and
-- PersonY (the replier whose personality is steered), plus the narrative's length in
-- whitespace-separated words.
{{ config(materialized='view') }}

select
    scenario_id,
    narrative,
    person_x,
    person_y,
    case
        when trim(narrative) = '' then 0
        else len(regexp_split_to_array(trim(narrative), '\s+'))
    end as n_words
from {{ ref('soda_scenarios') }}
