[
  (statement_block)
  (class_body)
  (interface_body)
  (enum_body)
  (switch_body)
] @block
