; Structs, enums, unions, traits and impl blocks.
(struct_item
  name: (type_identifier) @class.name) @class
(enum_item
  name: (type_identifier) @class.name
  body: (enum_variant_list) @class.body) @class
(union_item
  name: (type_identifier) @class.name
  body: (field_declaration_list) @class.body) @class
(trait_item
  name: (type_identifier) @class.name
  body: (declaration_list) @class.body) @class
(impl_item
  type: (_) @class.name
  body: (declaration_list) @class.body) @class
