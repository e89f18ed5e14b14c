[
  (block)
  (declaration_list)
  (match_block)
  (field_declaration_list)
] @block
