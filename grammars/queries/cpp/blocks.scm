[
  (compound_statement)
  (field_declaration_list)
  (enumerator_list)
  (declaration_list)
] @block
