"""Personality evaluation: inventories (and PsychoBench questionnaires), item administration,
conditions and cached answers, scores, reliability, trait intercorrelations beside human data."""
