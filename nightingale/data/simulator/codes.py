"""The simulator's code catalogue: every code it can emit, with a description, parents and unit.

Codes follow real systems: ICD-10 (WHO) for diagnoses and admission reasons, LOINC for labs and
observations, ATC for drugs, SNOMED CT for consultations and smoking status. Parents form a small
hierarchy (ICD-10 4-character code -> 3-character stem -> block -> chapter; ATC level 5 -> 4 -> 3
-> 2 -> 1; LOINC -> panel or class; SNOMED -> its parent concept), and the parents themselves are
catalogued so that `parent_codes` always resolves inside `metadata/codes.parquet`.

The engine refers to codes by integer index (`IDX["ICD10//E11.9"]`), so events are numpy arrays
until a shard is written; `CODE_STRINGS[idx]` maps them back.
"""

from __future__ import annotations

import polars as pl

from nightingale import schema as S

# (code, description, parents, unit) -- parents listed nearest first.
_ICD10_CHAPTERS = {
    "II": "Neoplasms",
    "IV": "Endocrine, nutritional and metabolic diseases",
    "V": "Mental and behavioural disorders",
    "VI": "Diseases of the nervous system",
    "IX": "Diseases of the circulatory system",
    "X": "Diseases of the respiratory system",
    "XIV": "Diseases of the genitourinary system",
    "XVIII": "Symptoms, signs and abnormal clinical and laboratory findings, not elsewhere classified",
    "XIX": "Injury, poisoning and certain other consequences of external causes",
}
# block -> (description, chapter)
_ICD10_BLOCKS = {
    "C15-C26": ("Malignant neoplasms of digestive organs", "II"),
    "C30-C39": ("Malignant neoplasms of respiratory and intrathoracic organs", "II"),
    "C50-C50": ("Malignant neoplasm of breast", "II"),
    "C60-C63": ("Malignant neoplasms of male genital organs", "II"),
    "E10-E14": ("Diabetes mellitus", "IV"),
    "E15-E16": ("Other disorders of glucose regulation and pancreatic internal secretion", "IV"),
    "F00-F09": ("Organic, including symptomatic, mental disorders", "V"),
    "G30-G32": ("Other degenerative diseases of the nervous system", "VI"),
    "I10-I15": ("Hypertensive diseases", "IX"),
    "I20-I25": ("Ischaemic heart diseases", "IX"),
    "I30-I52": ("Other forms of heart disease", "IX"),
    "I60-I69": ("Cerebrovascular diseases", "IX"),
    "J09-J18": ("Influenza and pneumonia", "X"),
    "J40-J47": ("Chronic lower respiratory diseases", "X"),
    "N17-N19": ("Renal failure", "XIV"),
    "R00-R09": ("Symptoms and signs involving the circulatory and respiratory systems", "XVIII"),
    "R50-R69": ("General symptoms and signs", "XVIII"),
    "S70-S79": ("Injuries to the hip and thigh", "XIX"),
}
# 3-character stem -> (description, block)
_ICD10_STEMS = {
    "C18": ("Malignant neoplasm of colon", "C15-C26"),
    "C34": ("Malignant neoplasm of bronchus and lung", "C30-C39"),
    "C50": ("Malignant neoplasm of breast", "C50-C50"),
    "C61": ("Malignant neoplasm of prostate", "C60-C63"),
    "E11": ("Type 2 diabetes mellitus", "E10-E14"),
    "E16": ("Other disorders of pancreatic internal secretion", "E15-E16"),
    "F03": ("Unspecified dementia", "F00-F09"),
    "G30": ("Alzheimer disease", "G30-G32"),
    "I10": ("Essential (primary) hypertension", "I10-I15"),
    "I21": ("Acute myocardial infarction", "I20-I25"),
    "I48": ("Atrial fibrillation and flutter", "I30-I52"),
    "I50": ("Heart failure", "I30-I52"),
    "I63": ("Cerebral infarction", "I60-I69"),
    "J18": ("Pneumonia, organism unspecified", "J09-J18"),
    "J44": ("Other chronic obstructive pulmonary disease", "J40-J47"),
    "N17": ("Acute renal failure", "N17-N19"),
    "N18": ("Chronic kidney disease", "N17-N19"),
    "R07": ("Pain in throat and chest", "R00-R09"),
    "R55": ("Syncope and collapse", "R50-R69"),
    "S72": ("Fracture of femur", "S70-S79"),
}
_ICD10_CODES = {
    "C18.9": "Malignant neoplasm: colon, unspecified",
    "C34.9": "Malignant neoplasm: bronchus or lung, unspecified",
    "C50.9": "Malignant neoplasm: breast, unspecified",
    "C61": "Malignant neoplasm of prostate",
    "E11.9": "Type 2 diabetes mellitus without complications",
    "E16.2": "Hypoglycaemia, unspecified",
    "F03": "Unspecified dementia",
    "G30.9": "Alzheimer disease, unspecified",
    "I10": "Essential (primary) hypertension",
    "I21.9": "Acute myocardial infarction, unspecified",
    "I48.9": "Atrial fibrillation and atrial flutter, unspecified",
    "I50.9": "Heart failure, unspecified",
    "I63.9": "Cerebral infarction, unspecified",
    "J18.9": "Pneumonia, unspecified",
    "J44.1": "Chronic obstructive pulmonary disease with acute exacerbation, unspecified",
    "J44.9": "Chronic obstructive pulmonary disease, unspecified",
    "N17.9": "Acute renal failure, unspecified",
    "N18.3": "Chronic kidney disease, stage 3",
    "N18.4": "Chronic kidney disease, stage 4",
    "N18.5": "Chronic kidney disease, stage 5",
    "R07.4": "Chest pain, unspecified",
    "R55": "Syncope and collapse",
    "S72.0": "Fracture of neck of femur",
}

# ATC: level 1..4 descriptions, then level-5 substances.
_ATC_GROUPS = {
    "A": "Alimentary tract and metabolism",
    "A10": "Drugs used in diabetes",
    "A10A": "Insulins and analogues",
    "A10AE": "Insulins and analogues for injection, long-acting",
    "A10B": "Blood glucose lowering drugs, excl. insulins",
    "A10BA": "Biguanides",
    "A10BB": "Sulfonylureas",
    "A10BH": "Dipeptidyl peptidase 4 (DPP-4) inhibitors",
    "A10BK": "Sodium-glucose co-transporter 2 (SGLT2) inhibitors",
    "B": "Blood and blood forming organs",
    "B01": "Antithrombotic agents",
    "B01A": "Antithrombotic agents",
    "B01AA": "Vitamin K antagonists",
    "B01AF": "Direct factor Xa inhibitors",
    "C": "Cardiovascular system",
    "C03": "Diuretics",
    "C03B": "Low-ceiling diuretics, excl. thiazides",
    "C03BA": "Sulfonamides, plain",
    "C03C": "High-ceiling diuretics",
    "C03CA": "Sulfonamides, plain",
    "C07": "Beta blocking agents",
    "C07A": "Beta blocking agents",
    "C07AB": "Beta blocking agents, selective",
    "C08": "Calcium channel blockers",
    "C08C": "Selective calcium channel blockers with mainly vascular effects",
    "C08CA": "Dihydropyridine derivatives",
    "C09": "Agents acting on the renin-angiotensin system",
    "C09A": "ACE inhibitors, plain",
    "C09AA": "ACE inhibitors, plain",
    "C10": "Lipid modifying agents",
    "C10A": "Lipid modifying agents, plain",
    "C10AA": "HMG CoA reductase inhibitors",
    "L": "Antineoplastic and immunomodulating agents",
    "L02": "Endocrine therapy",
    "L02B": "Hormone antagonists and related agents",
    "L02BA": "Anti-estrogens",
    "N": "Nervous system",
    "N06": "Psychoanaleptics",
    "N06D": "Anti-dementia drugs",
    "N06DA": "Anticholinesterases",
    "R": "Respiratory system",
    "R03": "Drugs for obstructive airway diseases",
    "R03A": "Adrenergics, inhalants",
    "R03AC": "Selective beta-2-adrenoreceptor agonists",
    "R03B": "Other drugs for obstructive airway diseases, inhalants",
    "R03BB": "Anticholinergics",
}
_ATC_DRUGS = {
    "A10AE04": "insulin glargine",
    "A10BA02": "metformin",
    "A10BB09": "gliclazide",
    "A10BH01": "sitagliptin",
    "A10BK01": "dapagliflozin",
    "B01AA03": "warfarin",
    "B01AF02": "apixaban",
    "C03BA11": "indapamide",
    "C03CA01": "furosemide",
    "C07AB07": "bisoprolol",
    "C08CA01": "amlodipine",
    "C09AA05": "ramipril",
    "C10AA01": "simvastatin",
    "C10AA05": "atorvastatin",
    "L02BA01": "tamoxifen",
    "N06DA02": "donepezil",
    "R03AC02": "salbutamol",
    "R03BB04": "tiotropium bromide",
}

# LOINC: code -> (description, parent, unit); parents are panels or LOINC classes.
_LOINC_PARENTS = {
    "LOINC//85353-1": "Vital signs, weight, height, head circumference, oxygen saturation and BMI panel",
    "LOINC//85354-9": "Blood pressure panel with all children optional",
    "LOINC_CLASS//CHEM": "LOINC class: chemistry",
    "LOINC_CLASS//HEM/BC": "LOINC class: hematology and blood count",
}
_EGFR_NAME = (
    "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] in Serum, Plasma or Blood "
    "by Creatinine-based formula (CKD-EPI)"
)
_LOINC = {
    "59261-8": ("Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol", "LOINC_CLASS//CHEM", "mmol/mol"),
    "62238-1": (_EGFR_NAME, "LOINC_CLASS//CHEM", "mL/min/1.73m2"),
    "14682-9": ("Creatinine [Moles/volume] in Serum or Plasma", "LOINC_CLASS//CHEM", "umol/L"),
    "14647-2": ("Cholesterol [Moles/volume] in Serum or Plasma", "LOINC_CLASS//CHEM", "mmol/L"),
    "2951-2": ("Sodium [Moles/volume] in Serum or Plasma", "LOINC_CLASS//CHEM", "mmol/L"),
    "2823-3": ("Potassium [Moles/volume] in Serum or Plasma", "LOINC_CLASS//CHEM", "mmol/L"),
    "1988-5": ("C reactive protein [Mass/volume] in Serum or Plasma", "LOINC_CLASS//CHEM", "mg/L"),
    "718-7": ("Hemoglobin [Mass/volume] in Blood", "LOINC_CLASS//HEM/BC", "g/L"),
    "8480-6": ("Systolic blood pressure", "LOINC//85354-9", "mm[Hg]"),
    "8462-4": ("Diastolic blood pressure", "LOINC//85354-9", "mm[Hg]"),
    "39156-5": ("Body mass index (BMI) [Ratio]", "LOINC//85353-1", "kg/m2"),
}

_SNOMED = {
    # code: (description, parents)
    "308335008": ("Patient encounter procedure", []),
    "185316007": ("Indirect encounter", ["SNOMED//308335008"]),
    "185345009": ("Encounter for symptom", ["SNOMED//308335008"]),
    "185317003": ("Telephone encounter", ["SNOMED//185316007"]),
    "390906007": ("Follow-up encounter", ["SNOMED//308335008"]),
    "365980008": ("Finding of tobacco use and exposure", []),
    "77176002": ("Smoker", ["SNOMED//365980008"]),
    "8517006": ("Ex-smoker", ["SNOMED//365980008"]),
    "266919005": ("Never smoked tobacco", ["SNOMED//365980008"]),
}

ETHNICITIES = ("White", "Asian", "Black", "Mixed", "Other")  # ONS 2021 broad groups

_OTHER = [
    (S.BIRTH_CODE, "Birth", [], None),
    (S.DEATH_CODE, "Death", [], None),
    ("SEX//F", "Sex: female", [], None),
    ("SEX//M", "Sex: male", [], None),
    *[(f"ETHNICITY//{e}", f"Ethnic group (ONS 2021 broad group): {e}", [], None) for e in ETHNICITIES],
    *[(f"IMD//Q{q}", f"Index of Multiple Deprivation quintile {q} (1 = most deprived)", [], None)
      for q in range(1, 6)],
    ("ADMISSION//EMERGENCY", "Emergency hospital admission", [], None),
    ("DISCHARGE//HOME", "Hospital discharge to usual residence", [], None),
    ("DISCHARGE//CARE_HOME", "Hospital discharge to a care home", [], None),
]


def _build() -> list[tuple[str, str, list[str], str | None]]:
    rows: list[tuple[str, str, list[str], str | None]] = []
    for ch, desc in _ICD10_CHAPTERS.items():
        rows.append((f"ICD10//CHAPTER_{ch}", f"ICD-10 chapter {ch}: {desc}", [], None))
    for blk, (desc, ch) in _ICD10_BLOCKS.items():
        rows.append((f"ICD10//{blk}", desc, [f"ICD10//CHAPTER_{ch}"], None))
    for stem, (desc, blk) in _ICD10_STEMS.items():
        if stem not in _ICD10_CODES:  # a 3-character code that is also emitted is added below
            rows.append((f"ICD10//{stem}", desc, [f"ICD10//{blk}"], None))
    for code, desc in _ICD10_CODES.items():
        stem = code[:3]
        parents = [f"ICD10//{stem}"] if len(code) > 3 else [f"ICD10//{_ICD10_STEMS[stem][1]}"]
        rows.append((f"ICD10//{code}", desc, parents, None))
    for grp, desc in _ATC_GROUPS.items():
        parent = {1: None, 3: grp[:1], 4: grp[:3], 5: grp[:4]}[len(grp)]
        rows.append((f"ATC//{grp}", desc, [f"ATC//{parent}"] if parent else [], None))
    for code, name in _ATC_DRUGS.items():
        rows.append((f"ATC//{code}", name, [f"ATC//{code[:5]}"], None))
    for code, desc in _LOINC_PARENTS.items():
        rows.append((code, desc, [], None))
    for code, (desc, parent, unit) in _LOINC.items():
        rows.append((f"LOINC//{code}", desc, [parent], unit))
    for code, (desc, parents) in _SNOMED.items():
        rows.append((f"SNOMED//{code}", desc, parents, None))
    rows.extend(_OTHER)
    return rows


CATALOGUE = _build()
CODE_STRINGS: tuple[str, ...] = tuple(r[0] for r in CATALOGUE)
IDX: dict[str, int] = {c: i for i, c in enumerate(CODE_STRINGS)}
assert len(IDX) == len(CODE_STRINGS), "duplicate code in the simulator catalogue"
UNITS: dict[str, str] = {r[0]: r[3] for r in CATALOGUE if r[3]}


def codes_table() -> pl.DataFrame:
    """`metadata/codes.parquet` content: code, description, parent_codes, unit."""
    return pl.DataFrame(
        {
            S.CODE: [r[0] for r in CATALOGUE],
            S.DESCRIPTION: [r[1] for r in CATALOGUE],
            S.PARENT_CODES: [r[2] for r in CATALOGUE],
            S.UNIT: [r[3] for r in CATALOGUE],
        },
        schema={**S.CODES_SCHEMA, S.UNIT: pl.String()},
    )
