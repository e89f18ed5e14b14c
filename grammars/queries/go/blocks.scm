[
  (block)
  (field_declaration_list)
] @block
